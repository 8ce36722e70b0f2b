-- stg_fhir__diagnostic_report_codings: one row per coding of DiagnosticReport.code.
-- Value-set matching (seed value_sets) joins here, so a code counts whichever coding carries it.
{{ config(materialized='incremental', unique_key='diagnostic_report_id',
          post_hook="{{ fhir_incremental_prune('diagnosticreport', 'diagnostic_report_id') }}") }}
{% set fields = [
    ('patient_reference', '$.subject.reference', 'text'),
    ('code', '$.code', 'json'),
] %}
{% set elements = [
    ('code', "json_extract(r.code, '$.coding[*]')"),
] %}

{{ fhir_codings_model('diagnosticreport', 'diagnostic_report_id', fields, elements) }}
