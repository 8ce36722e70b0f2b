-- stg_fhir__document_reference_codings: one row per coding of DocumentReference.type (Synthea sends two LOINC codings per note).
-- Value-set matching (seed value_sets) joins here, so a code counts whichever coding carries it.
{{ config(materialized='table') }}
{% set fields = [
    ('patient_reference', '$.subject.reference', 'text'),
    ('type', '$.type', 'json'),
] %}
{% set elements = [
    ('type', "json_extract(r.type, '$.coding[*]')"),
] %}

{{ fhir_codings_model('documentreference', 'document_reference_id', fields, elements) }}
