-- stg_fhir__organizations: one row per FHIR Organization (athenahealth: the practice and its
-- departments, with their athenaOne ids from the identifiers).
{{ config(materialized='table') }}
{% set fields = [
    ('identifiers', '$.identifier', 'list'),
    ('organization_name', '$.name', 'text'),
    ('active', '$.active', 'text'),
    ('type_code', '$.type[0].coding[0].code', 'text'),
    ('type_text', '$.type[0].text', 'text'),
    ('type_coding_display', '$.type[0].coding[0].display', 'text'),
    ('part_of_reference', '$.partOf.reference', 'text'),
    ('address', '$.address[0]', 'json'),
] %}

with source as (
    select * from {{ fhir_source('organization') }}
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
    id as organization_id,
    organization_name,
    type_code,
    coalesce(type_text, type_coding_display) as type_display,
    try_cast(list_filter(identifiers,
        lambda i: (i ->> 'system') like 'urn:athenahealth:athenanet:department:%')[1] ->> 'value' as bigint) as athena_department_id,
    try_cast(list_filter(identifiers,
        lambda i: (i ->> 'system') = 'urn:athenahealth:athenanet:practice')[1] ->> 'value' as bigint) as athena_practice_id,
    list_filter(identifiers, lambda i: (i ->> 'system') = 'http://hl7.org/fhir/sid/us-npi')[1] ->> 'value' as npi,
    {{ fhir_ref_id('part_of_reference', 'Organization') }} as part_of_organization_id,
    address ->> 'city' as city,
    address ->> 'state' as state,
    address ->> 'postalCode' as postal_code,
    coalesce(try_cast(active as boolean), true) as is_active,
    {{ utc_timestamp('last_updated') }} as last_updated_at,
    {{ utc_timestamp('loaded_at') }} as loaded_at,
    export_id
from extracted
