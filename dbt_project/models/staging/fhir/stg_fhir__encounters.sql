-- stg_fhir__encounters: one row per FHIR Encounter: class, type, period, and who / where / for whom.
-- The performer is the PPRF ("primary performer") participant, else the first one with an individual.
{{ config(materialized='incremental', unique_key='encounter_id',
          post_hook="{{ fhir_incremental_prune('encounter', 'encounter_id') }}") }}
{% set fields = [
    ('status', '$.status', 'text'),
    ('class_code', '$.class.code', 'text'),
    ('types', '$.type', 'list'),
    ('subject_reference', '$.subject.reference', 'text'),
    ('period_start', '$.period.start', 'text'),
    ('period_end', '$.period.end', 'text'),
    ('participants', '$.participant', 'list'),
    ('location_reference', '$.location[0].location.reference', 'text'),
    ('service_provider_reference', '$.serviceProvider.reference', 'text'),
    ('appointment_reference', '$.appointment[0].reference', 'text'),
    ('reasons', '$.reasonCode', 'list'),
] %}

with source as (
    select * from {{ fhir_incremental_source('encounter') }}
),

parsed as (
    select id, last_updated, loaded_at, export_id, {{ fhir_parse(fields) }} as _f
    from source
),

extracted as (
    select id, last_updated, loaded_at, export_id, {{ fhir_fields(fields) }}
    from parsed
),

picked as (
    select
        *,
        types[1] ->> '$.coding[0].code' as type_code,
        types[1] ->> '$.coding[0].system' as type_system,
        coalesce(types[1] ->> 'text', types[1] ->> '$.coding[0].display') as type_display,
        coalesce(
            list_filter(participants, lambda p: (p ->> '$.type[0].coding[0].code') = 'PPRF'
                                                and (p ->> '$.individual.reference') is not null)[1],
            list_filter(participants, lambda p: (p ->> '$.individual.reference') is not null)[1]
        ) ->> '$.individual.reference' as performer_reference,
        reasons[1] ->> '$.coding[0].code' as reason_code,
        reasons[1] ->> '$.coding[0].system' as reason_system,
        coalesce(reasons[1] ->> 'text', reasons[1] ->> '$.coding[0].display') as reason_display
    from extracted
)

select
    id as encounter_id,
    {{ fhir_ref_id('subject_reference', 'Patient') }} as patient_id,
    status,
    class_code,
    type_code,
    {{ fhir_code_system('type_system') }} as type_code_system,
    type_display,
    {{ fhir_timestamp('period_start') }} as period_start_at,
    {{ fhir_timestamp('period_end') }} as period_end_at,
    {{ fhir_date('period_start') }} as encounter_date,
    {{ fhir_ref_id('performer_reference', 'Practitioner') }} as practitioner_id,
    {{ fhir_ref_identifier('performer_reference', 'http://hl7.org/fhir/sid/us-npi') }} as practitioner_npi,
    performer_reference as practitioner_reference,
    {{ fhir_ref_id('location_reference', 'Location') }} as location_id,
    location_reference,
    {{ fhir_ref_id('service_provider_reference', 'Organization') }} as service_provider_organization_id,
    {{ fhir_ref_id('appointment_reference', 'Appointment') }} as appointment_id,
    reason_code,
    {{ fhir_code_system('reason_system') }} as reason_code_system,
    reason_display,
    {{ utc_timestamp('last_updated') }} as last_updated_at,
    {{ utc_timestamp('loaded_at') }} as loaded_at,
    export_id
from picked
