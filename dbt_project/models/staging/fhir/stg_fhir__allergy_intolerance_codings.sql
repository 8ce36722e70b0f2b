-- stg_fhir__allergy_intolerance_codings: one row per coding of AllergyIntolerance.code (RxNorm or SNOMED CT substances).
-- Value-set matching (seed value_sets) joins here, so a code counts whichever coding carries it.
{{ config(materialized='table') }}
{% set fields = [
    ('patient_reference', '$.patient.reference', 'text'),
    ('code', '$.code', 'json'),
] %}
{% set elements = [
    ('code', "json_extract(r.code, '$.coding[*]')"),
] %}

with source as (
    select * from {{ fhir_source('allergyintolerance') }}
),

parsed as (
    select id, {{ fhir_parse(fields) }} as _f
    from source
),

extracted as (
    select
        id as allergy_intolerance_id,
        {{ fhir_ref_id("(_f[1] ->> '$')", 'Patient') }} as patient_id,
        {{ fhir_fields(fields) }}
    from parsed
),

codings as (
    {{ fhir_codings('extracted', 'allergy_intolerance_id', elements) }}
)

select * from codings
