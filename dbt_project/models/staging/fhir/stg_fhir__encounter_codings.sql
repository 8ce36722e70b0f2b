-- stg_fhir__encounter_codings: one row per coding of Encounter.type (CPT from athenahealth, SNOMED CT from Synthea) and Encounter.reasonCode.
-- Value-set matching (seed value_sets) joins here, so a code counts whichever coding carries it.
{{ config(materialized='incremental', unique_key='encounter_id',
          post_hook="{{ fhir_incremental_prune('encounter', 'encounter_id') }}") }}
{% set fields = [
    ('patient_reference', '$.subject.reference', 'text'),
    ('types', '$.type', 'json'),
    ('reasons', '$.reasonCode', 'json'),
] %}
{% set elements = [
    ('type', "json_extract(r.types, '$[*].coding[*]')"),
    ('reason', "json_extract(r.reasons, '$[*].coding[*]')"),
] %}

{{ fhir_codings_model('encounter', 'encounter_id', fields, elements) }}
