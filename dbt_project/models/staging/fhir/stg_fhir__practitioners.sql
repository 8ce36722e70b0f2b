-- stg_fhir__practitioners: one row per FHIR Practitioner, with the NPI pulled out of its identifiers
-- (exports such as Synthea reference practitioners by NPI rather than by id).
{{ config(materialized='table') }}
{% set fields = [
    ('identifiers', '$.identifier', 'list'),
    ('names', '$.name', 'list'),
    ('gender', '$.gender', 'text'),
    ('active', '$.active', 'text'),
    ('qualification_code', '$.qualification[0].code.coding[0].code', 'text'),
] %}

with source as (
    select * from {{ fhir_source('practitioner') }}
),

parsed as (
    select id, last_updated, loaded_at, export_id, {{ fhir_parse(fields) }} as _f
    from source
),

extracted as (
    select id, last_updated, loaded_at, export_id, {{ fhir_fields(fields) }}
    from parsed
),

picked as (
    select
        *,
        coalesce(list_filter(names, lambda n: coalesce(n ->> 'use', 'official') = 'official')[1], names[1]) as name
    from extracted
)

select
    id as practitioner_id,
    list_filter(identifiers, lambda i: (i ->> 'system') = 'http://hl7.org/fhir/sid/us-npi')[1] ->> 'value' as npi,
    name ->> 'family' as family_name,
    name ->> '$.given[0]' as given_name,
    name ->> '$.prefix[0]' as name_prefix,
    name ->> '$.suffix[0]' as name_suffix,
    gender,
    qualification_code,
    coalesce(try_cast(active as boolean), true) as is_active,
    {{ utc_timestamp('last_updated') }} as last_updated_at,
    {{ utc_timestamp('loaded_at') }} as loaded_at,
    export_id
from picked
