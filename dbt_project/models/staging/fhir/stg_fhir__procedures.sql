-- stg_fhir__procedures: one row per FHIR Procedure: code (CPT/HCPCS preferred, else SNOMED CT or
-- whatever comes first) and when it was performed (performedDateTime, or performedPeriod as Synthea
-- writes it). Every coding is in stg_fhir__procedure_codings.
{{ config(materialized='incremental', unique_key='procedure_id',
          post_hook="{{ fhir_incremental_prune('procedure', 'procedure_id') }}") }}
{% set fields = [
    ('codings', '$.code.coding', 'list'),
    ('code_text', '$.code.text', 'text'),
    ('status', '$.status', 'text'),
    ('category', '$.category.coding[0].code', 'text'),
    ('subject_reference', '$.subject.reference', 'text'),
    ('encounter_reference', '$.encounter.reference', 'text'),
    ('performed_date_time', '$.performedDateTime', 'text'),
    ('performed_period_start', '$.performedPeriod.start', 'text'),
    ('performed_period_end', '$.performedPeriod.end', 'text'),
    ('location_reference', '$.location.reference', 'text'),
    ('reason_reference', '$.reasonReference[0].reference', 'text'),
    ('reason_code', '$.reasonCode[0].coding[0].code', 'text'),
] %}

with source as (
    select * from {{ fhir_incremental_source('procedure') }}
),

parsed as (
    select id, last_updated, loaded_at, export_id, {{ fhir_parse(fields) }} as _f
    from source
),

extracted as (
    select id, last_updated, loaded_at, export_id, {{ fhir_fields(fields) }}
    from parsed
),

resolved as (
    select
        *,
        coalesce({{ fhir_coding_in('codings', ['cpt', 'hcpcs']) }}, codings[1]) as coding,
        coalesce(performed_date_time, performed_period_start) as performed,
        coalesce(performed_period_end, performed_date_time) as performed_end
    from extracted
)

select
    id as procedure_id,
    {{ fhir_ref_id('subject_reference', 'Patient') }} as patient_id,
    {{ fhir_ref_id('encounter_reference', 'Encounter') }} as encounter_id,
    status,
    category,
    coding ->> 'code' as code,
    {{ fhir_code_system("(coding ->> 'system')") }} as code_system,
    coalesce(code_text, coding ->> 'display') as code_display,
    {{ fhir_timestamp('performed') }} as performed_at,
    {{ fhir_date('performed') }} as performed_date,
    {{ fhir_timestamp('performed_end') }} as performed_end_at,
    {{ fhir_ref_id('location_reference', 'Location') }} as location_id,
    {{ fhir_ref_id('reason_reference', 'Condition') }} as reason_condition_id,
    reason_code,
    {{ utc_timestamp('last_updated') }} as last_updated_at,
    {{ utc_timestamp('loaded_at') }} as loaded_at,
    export_id
from resolved
