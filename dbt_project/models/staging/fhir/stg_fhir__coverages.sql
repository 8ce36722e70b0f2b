-- stg_fhir__coverages: one row per FHIR Coverage (a patient's insurance), with the payer and, for
-- athenahealth, the athenaOne insurance package id carried in the payor identifier.
{{ config(materialized='incremental', unique_key='coverage_id',
          post_hook="{{ fhir_incremental_prune('coverage', 'coverage_id') }}") }}
{% set fields = [
    ('status', '$.status', 'text'),
    ('type_code', '$.type.coding[0].code', 'text'),
    ('type_text', '$.type.text', 'text'),
    ('type_coding_display', '$.type.coding[0].display', 'text'),
    ('subscriber_id', '$.subscriberId', 'text'),
    ('beneficiary_reference', '$.beneficiary.reference', 'text'),
    ('relationship', '$.relationship.coding[0].code', 'text'),
    ('period_start', '$.period.start', 'text'),
    ('period_end', '$.period.end', 'text'),
    ('payor_reference', '$.payor[0].reference', 'text'),
    ('payor_display', '$.payor[0].display', 'text'),
    ('payor_identifier_system', '$.payor[0].identifier.system', 'text'),
    ('payor_identifier_value', '$.payor[0].identifier.value', 'text'),
    ('coverage_order', '$.order', 'text'),
] %}

with source as (
    select * from {{ fhir_incremental_source('coverage') }}
),

parsed as (
    select id, last_updated, loaded_at, export_id, {{ fhir_parse(fields) }} as _f
    from source
),

extracted as (
    select id, last_updated, loaded_at, export_id, {{ fhir_fields(fields) }}
    from parsed
)

select
    id as coverage_id,
    {{ fhir_ref_id('beneficiary_reference', 'Patient') }} as patient_id,
    status,
    type_code,
    coalesce(type_text, type_coding_display) as type_display,
    subscriber_id,
    relationship,
    {{ fhir_date('period_start') }} as period_start_date,
    {{ fhir_date('period_end') }} as period_end_date,
    try_cast(coverage_order as integer) as coverage_order,
    {{ fhir_ref_id('payor_reference', 'Organization') }} as payor_organization_id,
    payor_display,
    case when payor_identifier_system like 'urn:athenahealth:athenanet:insurancepackage:%'
         then try_cast(payor_identifier_value as bigint) end as athena_insurance_package_id,
    {{ utc_timestamp('last_updated') }} as last_updated_at,
    {{ utc_timestamp('loaded_at') }} as loaded_at,
    export_id
from extracted
