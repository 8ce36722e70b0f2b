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

with source as (
    select * from {{ fhir_source('documentreference') }}
),

parsed as (
    select id, {{ fhir_parse(fields) }} as _f
    from source
),

extracted as (
    select
        id as document_reference_id,
        {{ fhir_ref_id("(_f[1] ->> '$')", 'Patient') }} as patient_id,
        {{ fhir_fields(fields) }}
    from parsed
),

codings as (
    {{ fhir_codings('extracted', 'document_reference_id', elements) }}
)

select * from codings
