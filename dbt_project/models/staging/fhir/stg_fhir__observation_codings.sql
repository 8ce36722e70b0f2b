-- stg_fhir__observation_codings: one row per coding of Observation.code and of its coded answer (valueCodeableConcept, e.g. a SNOMED CT smoking status).
-- Value-set matching (seed value_sets) joins here, so a code counts whichever coding carries it.
{{ config(materialized='incremental', unique_key='observation_id',
          post_hook="{{ fhir_incremental_prune('observation', 'observation_id') }}") }}
{% set fields = [
    ('patient_reference', '$.subject.reference', 'text'),
    ('code', '$.code', 'json'),
    ('value_concept', '$.valueCodeableConcept', 'json'),
] %}
{% set elements = [
    ('code', "json_extract(r.code, '$.coding[*]')"),
    ('value', "json_extract(r.value_concept, '$.coding[*]')"),
] %}

{{ fhir_codings_model('observation', 'observation_id', fields, elements) }}
