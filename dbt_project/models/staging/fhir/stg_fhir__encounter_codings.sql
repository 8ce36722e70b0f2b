-- stg_fhir__encounter_codings: one row per coding of Encounter.type (CPT from athenahealth, SNOMED CT from Synthea) and Encounter.reasonCode.
-- Value-set matching (seed value_sets) joins here, so a code counts whichever coding carries it.
{{ config(materialized='table') }}
{% set fields = [
    ('patient_reference', '$.subject.reference', 'text'),
    ('types', '$.type', 'json'),
    ('reasons', '$.reasonCode', 'json'),
] %}
{% set elements = [
    ('type', "json_extract(r.types, '$[*].coding[*]')"),
    ('reason', "json_extract(r.reasons, '$[*].coding[*]')"),
] %}

with source as (
    select * from {{ fhir_source('encounter') }}
),

parsed as (
    select id, {{ fhir_parse(fields) }} as _f
    from source
),

extracted as (
    select
        id as encounter_id,
        {{ fhir_ref_id("(_f[1] ->> '$')", 'Patient') }} as patient_id,
        {{ fhir_fields(fields) }}
    from parsed
),

codings as (
    {{ fhir_codings('extracted', 'encounter_id', elements) }}
)

select * from codings
