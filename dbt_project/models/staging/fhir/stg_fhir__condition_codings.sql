-- stg_fhir__condition_codings: one row per coding of Condition.code (ICD-10-CM and SNOMED CT side by side).
-- Value-set matching (seed value_sets) joins here, so a code counts whichever coding carries it.
{{ config(materialized='incremental', unique_key='condition_id',
          post_hook="{{ fhir_incremental_prune('condition', 'condition_id') }}") }}
{% set fields = [
    ('patient_reference', '$.subject.reference', 'text'),
    ('code', '$.code', 'json'),
] %}
{% set elements = [
    ('code', "json_extract(r.code, '$.coding[*]')"),
] %}

{{ fhir_codings_model('condition', 'condition_id', fields, elements) }}
