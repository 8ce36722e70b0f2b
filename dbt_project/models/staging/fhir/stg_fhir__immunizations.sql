-- stg_fhir__immunizations: one row per FHIR Immunization, with the CVX code picked by system
-- (a CPT coding may ride along) and the occurrence choice type resolved.
{{ config(materialized='incremental', unique_key='immunization_id',
          post_hook="{{ fhir_incremental_prune('immunization', 'immunization_id') }}") }}
{% set fields = [
    ('codings', '$.vaccineCode.coding', 'list'),
    ('code_text', '$.vaccineCode.text', 'text'),
    ('status', '$.status', 'text'),
    ('status_reason_code', '$.statusReason.coding[0].code', 'text'),
    ('patient_reference', '$.patient.reference', 'text'),
    ('encounter_reference', '$.encounter.reference', 'text'),
    ('occurrence_date_time', '$.occurrenceDateTime', 'text'),
    ('occurrence_string', '$.occurrenceString', 'text'),
    ('primary_source', '$.primarySource', 'text'),
    ('location_reference', '$.location.reference', 'text'),
] %}

with source as (
    select * from {{ fhir_incremental_source('immunization') }}
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
        {{ fhir_coding_in('codings', ['cvx']) }} as cvx,
        coalesce(occurrence_date_time, occurrence_string) as occurrence
    from extracted
)

select
    id as immunization_id,
    {{ fhir_ref_id('patient_reference', 'Patient') }} as patient_id,
    {{ fhir_ref_id('encounter_reference', 'Encounter') }} as encounter_id,
    status,
    status_reason_code,
    cvx ->> 'code' as cvx_code,
    coalesce(code_text, cvx ->> 'display', codings[1] ->> 'display') as vaccine_display,
    {{ fhir_coding_in('codings', ['cpt']) }} ->> 'code' as cpt_code,
    {{ fhir_timestamp('occurrence') }} as occurrence_at,
    {{ fhir_date('occurrence') }} as occurrence_date,
    try_cast(primary_source as boolean) as is_primary_source,
    {{ fhir_ref_id('location_reference', 'Location') }} as location_id,
    {{ utc_timestamp('last_updated') }} as last_updated_at,
    {{ utc_timestamp('loaded_at') }} as loaded_at,
    export_id
from resolved
