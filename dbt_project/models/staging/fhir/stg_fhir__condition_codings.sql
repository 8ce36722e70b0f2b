-- stg_fhir__condition_codings: one row per coding of Condition.code (ICD-10-CM and SNOMED CT side by side).
-- Value-set matching (seed value_sets) joins here, so a code counts whichever coding carries it.
{{ config(materialized='table') }}
{% set fields = [
    ('patient_reference', '$.subject.reference', 'text'),
    ('code', '$.code', 'json'),
] %}
{% set elements = [
    ('code', "json_extract(r.code, '$.coding[*]')"),
] %}

with source as (
    select * from {{ fhir_source('condition') }}
),

parsed as (
    select id, {{ fhir_parse(fields) }} as _f
    from source
),

extracted as (
    select
        id as condition_id,
        {{ fhir_ref_id("(_f[1] ->> '$')", 'Patient') }} as patient_id,
        {{ fhir_fields(fields) }}
    from parsed
),

codings as (
    {{ fhir_codings('extracted', 'condition_id', elements) }}
)

select * from codings
