-- stg_fhir__procedure_codings: one row per coding of Procedure.code (CPT, HCPCS, SNOMED CT).
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
    select * from {{ fhir_source('procedure') }}
),

parsed as (
    select id, {{ fhir_parse(fields) }} as _f
    from source
),

extracted as (
    select
        id as procedure_id,
        {{ fhir_ref_id("(_f[1] ->> '$')", 'Patient') }} as patient_id,
        {{ fhir_fields(fields) }}
    from parsed
),

codings as (
    {{ fhir_codings('extracted', 'procedure_id', elements) }}
)

select * from codings
