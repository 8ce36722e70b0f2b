-- stg_fhir__locations: one row per FHIR Location (athenahealth: a department, with its place of service).
{{ config(materialized='table') }}
{% set fields = [
    ('identifiers', '$.identifier', 'list'),
    ('location_name', '$.name', 'text'),
    ('status', '$.status', 'text'),
    ('mode', '$.mode', 'text'),
    ('type_code', '$.type[0].coding[0].code', 'text'),
    ('type_system', '$.type[0].coding[0].system', 'text'),
    ('type_text', '$.type[0].text', 'text'),
    ('type_coding_display', '$.type[0].coding[0].display', 'text'),
    ('managing_organization_reference', '$.managingOrganization.reference', 'text'),
    ('address', '$.address', 'json'),
    ('latitude', '$.position.latitude', 'text'),
    ('longitude', '$.position.longitude', 'text'),
] %}

with source as (
    select * from {{ fhir_source('location') }}
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
    id as location_id,
    location_name,
    status,
    mode,
    case when lower(type_system) like '%place%of%service%' then type_code end as place_of_service_code,
    type_code,
    coalesce(type_text, type_coding_display) as type_display,
    try_cast(list_filter(identifiers,
        lambda i: (i ->> 'system') like 'urn:athenahealth:athenanet:department:%')[1] ->> 'value' as bigint) as athena_department_id,
    {{ fhir_ref_id('managing_organization_reference', 'Organization') }} as managing_organization_id,
    address ->> 'city' as city,
    address ->> 'state' as state,
    address ->> 'postalCode' as postal_code,
    try_cast(latitude as double) as latitude,
    try_cast(longitude as double) as longitude,
    {{ utc_timestamp('last_updated') }} as last_updated_at,
    {{ utc_timestamp('loaded_at') }} as loaded_at,
    export_id
from extracted
