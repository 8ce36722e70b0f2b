-- stg_fhir__procedure_codings: one row per coding of Procedure.code (CPT, HCPCS, SNOMED CT).
-- Value-set matching (seed value_sets) joins here, so a code counts whichever coding carries it.
{{ config(materialized='incremental', unique_key='procedure_id',
          post_hook="{{ fhir_incremental_prune('procedure', 'procedure_id') }}") }}
{% set fields = [
    ('patient_reference', '$.subject.reference', 'text'),
    ('code', '$.code', 'json'),
] %}
{% set elements = [
    ('code', "json_extract(r.code, '$.coding[*]')"),
] %}

{{ fhir_codings_model('procedure', 'procedure_id', fields, elements) }}
