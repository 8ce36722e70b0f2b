-- stg_fhir__document_reference_codings: one row per coding of DocumentReference.type (Synthea sends two LOINC codings per note).
-- Value-set matching (seed value_sets) joins here, so a code counts whichever coding carries it.
{{ config(materialized='incremental', unique_key='document_reference_id',
          post_hook="{{ fhir_incremental_prune('documentreference', 'document_reference_id') }}") }}
{% set fields = [
    ('patient_reference', '$.subject.reference', 'text'),
    ('type', '$.type', 'json'),
] %}
{% set elements = [
    ('type', "json_extract(r.type, '$.coding[*]')"),
] %}

{{ fhir_codings_model('documentreference', 'document_reference_id', fields, elements) }}
