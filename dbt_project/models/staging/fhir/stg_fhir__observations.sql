-- stg_fhir__observations: one row per FHIR Observation: code (LOINC preferred), when (effectiveDateTime,
-- effectivePeriod.start or effectiveInstant), and the value whatever its type (valueQuantity,
-- valueCodeableConcept, valueString, valueBoolean, valueInteger). Panels such as blood pressure
-- carry no value of their own: their components are in stg_fhir__observation_components.
{{ config(materialized='incremental', unique_key='observation_id',
          post_hook="{{ fhir_incremental_prune('observation', 'observation_id') }}") }}
{% set fields = [
    ('codings', '$.code.coding', 'list'),
    ('code_text', '$.code.text', 'text'),
    ('status', '$.status', 'text'),
    ('category', '$.category[0].coding[0].code', 'text'),
    ('subject_reference', '$.subject.reference', 'text'),
    ('encounter_reference', '$.encounter.reference', 'text'),
    ('effective_date_time', '$.effectiveDateTime', 'text'),
    ('effective_period_start', '$.effectivePeriod.start', 'text'),
    ('effective_instant', '$.effectiveInstant', 'text'),
    ('effective_end', '$.effectivePeriod.end', 'text'),
    ('issued', '$.issued', 'text'),
    ('value_quantity', '$.valueQuantity', 'json'),
    ('value_codings', '$.valueCodeableConcept.coding', 'list'),
    ('value_text', '$.valueCodeableConcept.text', 'text'),
    ('value_string', '$.valueString', 'text'),
    ('value_boolean', '$.valueBoolean', 'text'),
    ('value_integer', '$.valueInteger', 'text'),
    ('components', '$.component', 'list'),
] %}

with source as (
    select * from {{ fhir_incremental_source('observation') }}
),

parsed as (
    select id, last_updated, loaded_at, export_id, {{ fhir_parse(fields) }} as _f
    from source
),

extracted as (
    select id, last_updated, loaded_at, export_id, {{ fhir_fields(fields) }}
    from parsed
),

resolved as (
    select
        *,
        coalesce({{ fhir_coding_in('codings', ['loinc']) }}, codings[1]) as coding,
        coalesce(effective_date_time, effective_period_start, effective_instant) as effective
    from extracted
)

select
    id as observation_id,
    {{ fhir_ref_id('subject_reference', 'Patient') }} as patient_id,
    {{ fhir_ref_id('encounter_reference', 'Encounter') }} as encounter_id,
    status,
    category,
    coding ->> 'code' as code,
    {{ fhir_code_system("(coding ->> 'system')") }} as code_system,
    coalesce(code_text, codings[1] ->> 'display') as code_display,
    {{ fhir_timestamp('effective') }} as effective_at,
    {{ fhir_date('effective') }} as effective_date,
    {{ fhir_timestamp('effective_end') }} as effective_end_at,
    {{ fhir_timestamp('issued') }} as issued_at,
    case
        when value_quantity is not null then 'quantity'
        when len(value_codings) > 0 or value_text is not null then 'codeable_concept'
        when value_string is not null then 'string'
        when value_boolean is not null then 'boolean'
        when value_integer is not null then 'integer'
    end as value_type,
    coalesce(try_cast(value_quantity ->> 'value' as double), try_cast(value_integer as double)) as value_numeric,
    coalesce(value_quantity ->> 'unit', value_quantity ->> 'code') as value_unit,
    value_quantity ->> 'comparator' as value_comparator,
    value_codings[1] ->> 'code' as value_code,
    {{ fhir_code_system("(value_codings[1] ->> 'system')") }} as value_code_system,
    coalesce(value_text, value_codings[1] ->> 'display') as value_display,
    value_string,
    try_cast(value_boolean as boolean) as value_boolean,
    cast(coalesce(len(components), 0) as integer) as component_count,
    {{ utc_timestamp('last_updated') }} as last_updated_at,
    {{ utc_timestamp('loaded_at') }} as loaded_at,
    export_id
from resolved
