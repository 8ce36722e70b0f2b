-- stg_fhir__observation_components: Observation.component unnested, one row per component. A US Core
-- blood pressure (85354-9) becomes two rows, systolic (8480-6) and diastolic (8462-4), each with its
-- own value, and `blood_pressure_part` says which.
{{ config(materialized='incremental', unique_key='observation_id',
          post_hook="{{ fhir_incremental_prune('observation', 'observation_id') }}") }}
{% set fields = [
    ('components', '$.component', 'list'),
    ('subject_reference', '$.subject.reference', 'text'),
    ('encounter_reference', '$.encounter.reference', 'text'),
    ('observation_code', '$.code.coding[0].code', 'text'),
    ('status', '$.status', 'text'),
    ('effective_date_time', '$.effectiveDateTime', 'text'),
    ('effective_period_start', '$.effectivePeriod.start', 'text'),
    ('effective_instant', '$.effectiveInstant', 'text'),
] %}

with source as (
    select * from {{ fhir_incremental_source('observation') }}
),

parsed as (
    select id, last_updated, loaded_at, {{ fhir_parse(fields) }} as _f
    from source
),

extracted as (
    select id, last_updated, loaded_at, {{ fhir_fields(fields) }}
    from parsed
),

components as (
    select
        o.id as observation_id,
        o.subject_reference,
        o.encounter_reference,
        o.observation_code,
        o.status,
        coalesce(o.effective_date_time, o.effective_period_start, o.effective_instant) as effective,
        o.last_updated,
        o.loaded_at,
        c.component_index,
        json_extract(c.component, ['$.code.coding', '$.code.text', '$.valueQuantity', '$.valueCodeableConcept',
                                   '$.valueString']) as _c
    from extracted as o,
        unnest(o.components) with ordinality as c(component, component_index)
),

coded as (
    select
        *,
        json_extract(_c[1], '$[*]') as codings,
        _c[3] as value_quantity,
        json_extract(_c[4], '$.coding[*]') as value_codings
    from components
)

select
    observation_id,
    cast(component_index as integer) as component_index,
    {{ fhir_ref_id('subject_reference', 'Patient') }} as patient_id,
    {{ fhir_ref_id('encounter_reference', 'Encounter') }} as encounter_id,
    observation_code,
    status,
    {{ fhir_timestamp('effective') }} as effective_at,
    {{ fhir_date('effective') }} as effective_date,
    coalesce({{ fhir_coding_in('codings', ['loinc']) }}, codings[1]) ->> 'code' as code,
    {{ fhir_code_system("(coalesce(" ~ fhir_coding_in('codings', ['loinc']) ~ ", codings[1]) ->> 'system')") }} as code_system,
    coalesce(_c[2] ->> '$', codings[1] ->> 'display') as code_display,
    case coalesce({{ fhir_coding_in('codings', ['loinc']) }}, codings[1]) ->> 'code'
        when '8480-6' then 'systolic' when '8462-4' then 'diastolic' end as blood_pressure_part,
    try_cast(value_quantity ->> 'value' as double) as value_numeric,
    coalesce(value_quantity ->> 'unit', value_quantity ->> 'code') as value_unit,
    value_codings[1] ->> 'code' as value_code,
    value_codings[1] ->> 'display' as value_display,
    _c[5] ->> '$' as value_string,
    {{ utc_timestamp('last_updated') }} as last_updated_at,
    {{ utc_timestamp('loaded_at') }} as loaded_at
from coded
