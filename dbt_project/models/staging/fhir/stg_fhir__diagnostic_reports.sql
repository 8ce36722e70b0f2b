-- stg_fhir__diagnostic_reports: one row per FHIR DiagnosticReport (lab panels), with the ids of the
-- result Observations it groups.
{{ config(materialized='incremental', unique_key='diagnostic_report_id',
          post_hook="{{ fhir_incremental_prune('diagnosticreport', 'diagnostic_report_id') }}") }}
{% set fields = [
    ('codings', '$.code.coding', 'list'),
    ('code_text', '$.code.text', 'text'),
    ('status', '$.status', 'text'),
    ('category', '$.category[0].coding[0].code', 'text'),
    ('subject_reference', '$.subject.reference', 'text'),
    ('encounter_reference', '$.encounter.reference', 'text'),
    ('effective_date_time', '$.effectiveDateTime', 'text'),
    ('effective_period_start', '$.effectivePeriod.start', 'text'),
    ('issued', '$.issued', 'text'),
    ('results', '$.result', 'list'),
] %}

with source as (
    select * from {{ fhir_incremental_source('diagnosticreport') }}
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
        coalesce({{ fhir_coding_in('codings', ['loinc']) }}, codings[1]) as coding,
        coalesce(effective_date_time, effective_period_start) as effective,
        list_transform(results, lambda r: r ->> 'reference') as result_references
    from extracted
)

select
    id as diagnostic_report_id,
    {{ fhir_ref_id('subject_reference', 'Patient') }} as patient_id,
    {{ fhir_ref_id('encounter_reference', 'Encounter') }} as encounter_id,
    status,
    category,
    coding ->> 'code' as code,
    {{ fhir_code_system("(coding ->> 'system')") }} as code_system,
    coalesce(code_text, coding ->> 'display') as code_display,
    {{ fhir_timestamp('effective') }} as effective_at,
    {{ fhir_date('effective') }} as effective_date,
    {{ fhir_timestamp('issued') }} as issued_at,
    list_transform(result_references, lambda r: {{ fhir_ref_id('r', 'Observation') }}) as result_observation_ids,
    coalesce(len(result_references), 0) as result_count,
    {{ utc_timestamp('last_updated') }} as last_updated_at,
    {{ utc_timestamp('loaded_at') }} as loaded_at,
    export_id
from resolved
