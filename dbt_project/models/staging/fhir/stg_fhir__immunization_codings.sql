-- stg_fhir__immunization_codings: one row per coding of Immunization.vaccineCode (CVX, and CPT or NDC where sent).
-- Value-set matching (seed value_sets) joins here, so a code counts whichever coding carries it.
{{ config(materialized='table') }}
{% set fields = [
    ('patient_reference', '$.patient.reference', 'text'),
    ('vaccine_code', '$.vaccineCode', 'json'),
] %}
{% set elements = [
    ('vaccine_code', "json_extract(r.vaccine_code, '$.coding[*]')"),
] %}

with source as (
    select * from {{ fhir_source('immunization') }}
),

parsed as (
    select id, {{ fhir_parse(fields) }} as _f
    from source
),

extracted as (
    select
        id as immunization_id,
        {{ fhir_ref_id("(_f[1] ->> '$')", 'Patient') }} as patient_id,
        {{ fhir_fields(fields) }}
    from parsed
),

codings as (
    {{ fhir_codings('extracted', 'immunization_id', elements) }}
)

select * from codings
