-- stg_fhir__conditions: one row per FHIR Condition (problem-list items and encounter diagnoses), with
-- the ICD-10-CM and SNOMED CT codings picked by system (exporters send both, in any order) and the
-- onset / abatement choice types resolved (onsetDateTime or onsetPeriod.start, ...).
-- Every coding is in stg_fhir__condition_codings.
{{ config(materialized='incremental', unique_key='condition_id',
          post_hook="{{ fhir_incremental_prune('condition', 'condition_id') }}") }}
{% set fields = [
    ('codings', '$.code.coding', 'list'),
    ('code_text', '$.code.text', 'text'),
    ('clinical_status', '$.clinicalStatus.coding[0].code', 'text'),
    ('verification_status', '$.verificationStatus.coding[0].code', 'text'),
    ('category', '$.category[0].coding[0].code', 'text'),
    ('subject_reference', '$.subject.reference', 'text'),
    ('encounter_reference', '$.encounter.reference', 'text'),
    ('onset_date_time', '$.onsetDateTime', 'text'),
    ('onset_period_start', '$.onsetPeriod.start', 'text'),
    ('abatement_date_time', '$.abatementDateTime', 'text'),
    ('abatement_period_end', '$.abatementPeriod.end', 'text'),
    ('abatement_period_start', '$.abatementPeriod.start', 'text'),
    ('recorded', '$.recordedDate', 'text'),
] %}

with source as (
    select * from {{ fhir_incremental_source('condition') }}
),

parsed as (
    select id, last_updated, loaded_at, export_id, {{ fhir_parse(fields) }} as _f
    from source
),

extracted as (
    select
        id, last_updated, loaded_at, export_id, {{ fhir_fields(fields) }}
    from parsed
),

resolved as (
    select
        *,
        coalesce(onset_date_time, onset_period_start) as onset,
        coalesce(abatement_date_time, abatement_period_end, abatement_period_start) as abatement
    from extracted
)

select
    id as condition_id,
    {{ fhir_ref_id('subject_reference', 'Patient') }} as patient_id,
    {{ fhir_ref_id('encounter_reference', 'Encounter') }} as encounter_id,
    category,
    clinical_status,
    verification_status,
    {{ fhir_coding_in('codings', ['icd-10-cm']) }} ->> 'code' as icd10_code,
    {{ fhir_coding_in('codings', ['snomed-ct']) }} ->> 'code' as snomed_code,
    codings[1] ->> 'code' as code,
    {{ fhir_code_system("(codings[1] ->> 'system')") }} as code_system,
    coalesce(code_text, codings[1] ->> 'display') as code_display,
    {{ fhir_timestamp('onset') }} as onset_at,
    {{ fhir_date('onset') }} as onset_date,
    {{ fhir_date('abatement') }} as abatement_date,
    {{ fhir_timestamp('recorded') }} as recorded_at,
    {{ fhir_date('recorded') }} as recorded_date,
    {{ utc_timestamp('last_updated') }} as last_updated_at,
    {{ utc_timestamp('loaded_at') }} as loaded_at,
    export_id
from resolved
