-- stg_fhir__allergy_intolerances: one row per FHIR AllergyIntolerance (substance code, status, criticality).
{{ config(materialized='incremental', unique_key='allergy_intolerance_id',
          post_hook="{{ fhir_incremental_prune('allergyintolerance', 'allergy_intolerance_id') }}") }}
{% set fields = [
    ('codings', '$.code.coding', 'list'),
    ('code_text', '$.code.text', 'text'),
    ('clinical_status', '$.clinicalStatus.coding[0].code', 'text'),
    ('verification_status', '$.verificationStatus.coding[0].code', 'text'),
    ('allergy_type', '$.type', 'text'),
    ('category', '$.category[0]', 'text'),
    ('criticality', '$.criticality', 'text'),
    ('patient_reference', '$.patient.reference', 'text'),
    ('encounter_reference', '$.encounter.reference', 'text'),
    ('onset_date_time', '$.onsetDateTime', 'text'),
    ('onset_period_start', '$.onsetPeriod.start', 'text'),
    ('recorded', '$.recordedDate', 'text'),
    ('reaction_severity', '$.reaction[0].severity', 'text'),
] %}

with source as (
    select * from {{ fhir_incremental_source('allergyintolerance') }}
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
    select *, coalesce(onset_date_time, onset_period_start) as onset
    from extracted
)

select
    id as allergy_intolerance_id,
    {{ fhir_ref_id('patient_reference', 'Patient') }} as patient_id,
    {{ fhir_ref_id('encounter_reference', 'Encounter') }} as encounter_id,
    clinical_status,
    verification_status,
    allergy_type,
    category,
    criticality,
    codings[1] ->> 'code' as code,
    {{ fhir_code_system("(codings[1] ->> 'system')") }} as code_system,
    coalesce(code_text, codings[1] ->> 'display') as code_display,
    {{ fhir_date('onset') }} as onset_date,
    {{ fhir_timestamp('recorded') }} as recorded_at,
    {{ fhir_date('recorded') }} as recorded_date,
    reaction_severity,
    {{ utc_timestamp('last_updated') }} as last_updated_at,
    {{ utc_timestamp('loaded_at') }} as loaded_at,
    export_id
from resolved
