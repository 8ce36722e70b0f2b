-- stg_fhir__immunization_codings: one row per coding of Immunization.vaccineCode (CVX, and CPT or NDC where sent).
-- Value-set matching (seed value_sets) joins here, so a code counts whichever coding carries it.
{{ config(materialized='incremental', unique_key='immunization_id',
          post_hook="{{ fhir_incremental_prune('immunization', 'immunization_id') }}") }}
{% set fields = [
    ('patient_reference', '$.patient.reference', 'text'),
    ('vaccine_code', '$.vaccineCode', 'json'),
] %}
{% set elements = [
    ('vaccine_code', "json_extract(r.vaccine_code, '$.coding[*]')"),
] %}

{{ fhir_codings_model('immunization', 'immunization_id', fields, elements) }}
