-- stg_fhir__allergy_intolerance_codings: one row per coding of AllergyIntolerance.code (RxNorm or SNOMED CT substances).
-- Value-set matching (seed value_sets) joins here, so a code counts whichever coding carries it.
{{ config(materialized='incremental', unique_key='allergy_intolerance_id',
          post_hook="{{ fhir_incremental_prune('allergyintolerance', 'allergy_intolerance_id') }}") }}
{% set fields = [
    ('patient_reference', '$.patient.reference', 'text'),
    ('code', '$.code', 'json'),
] %}
{% set elements = [
    ('code', "json_extract(r.code, '$.coding[*]')"),
] %}

{{ fhir_codings_model('allergyintolerance', 'allergy_intolerance_id', fields, elements) }}
