-- stg_fhir__patients: one row per FHIR Patient, flattened (US Core demographics, race/ethnicity
-- extensions, the athenaOne patient id from its identifier so FHIR and Data View can be joined).
{{ config(materialized='incremental', unique_key='patient_id',
          post_hook="{{ fhir_incremental_prune('patient', 'patient_id') }}") }}
{% set fields = [
    ('identifiers', '$.identifier', 'list'),
    ('names', '$.name', 'list'),
    ('extensions', '$.extension', 'list'),
    ('addresses', '$.address', 'list'),
    ('communications', '$.communication', 'list'),
    ('gender', '$.gender', 'text'),
    ('birth_date', '$.birthDate', 'text'),
    ('deceased_boolean', '$.deceasedBoolean', 'text'),
    ('deceased_date_time', '$.deceasedDateTime', 'text'),
    ('active', '$.active', 'text'),
    ('general_practitioner_reference', '$.generalPractitioner[0].reference', 'text'),
    ('managing_organization_reference', '$.managingOrganization.reference', 'text'),
] %}
{% set us_core = 'http://hl7.org/fhir/us/core/StructureDefinition/' %}

with source as (
    select * from {{ fhir_incremental_source('patient') }}
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
        list_filter(identifiers, lambda i: (i ->> 'system') like 'urn:athenahealth:athenanet:patient:%')[1]
            as athena_identifier,
        coalesce(list_filter(names, lambda n: coalesce(n ->> 'use', 'official') = 'official')[1], names[1]) as name,
        list_filter(extensions, lambda e: (e ->> 'url') = '{{ us_core }}us-core-race')[1] as race,
        list_filter(extensions, lambda e: (e ->> 'url') = '{{ us_core }}us-core-ethnicity')[1] as ethnicity,
        coalesce(list_filter(addresses, lambda a: (a ->> 'use') = 'home')[1], addresses[1]) as address,
        coalesce(list_filter(communications, lambda c: (c ->> 'preferred') = 'true')[1], communications[1])
            as communication
    from extracted
)

select
    id as patient_id,
    list_filter(identifiers, lambda i: (i ->> '$.type.coding[0].code') = 'MR')[1] ->> 'value' as medical_record_number,
    try_cast(athena_identifier ->> 'value' as bigint) as athena_patient_id,
    try_cast(regexp_extract(athena_identifier ->> 'system', ':([0-9]+)$', 1) as bigint) as athena_context_id,
    name ->> 'family' as family_name,
    name ->> '$.given[0]' as given_name,
    gender,
    list_filter(extensions, lambda e: (e ->> 'url') = '{{ us_core }}us-core-birthsex')[1] ->> 'valueCode' as birth_sex,
    {{ fhir_date('birth_date') }} as birth_date,
    coalesce(try_cast(deceased_boolean as boolean), deceased_date_time is not null) as is_deceased,
    {{ fhir_date('deceased_date_time') }} as deceased_date,
    list_filter(json_extract(race, '$.extension[*]'), lambda e: (e ->> 'url') = 'ombCategory')[1]
        ->> '$.valueCoding.code' as race_code,
    list_filter(json_extract(race, '$.extension[*]'), lambda e: (e ->> 'url') = 'text')[1] ->> 'valueString' as race_text,
    list_filter(json_extract(ethnicity, '$.extension[*]'), lambda e: (e ->> 'url') = 'ombCategory')[1]
        ->> '$.valueCoding.code' as ethnicity_code,
    list_filter(json_extract(ethnicity, '$.extension[*]'), lambda e: (e ->> 'url') = 'text')[1]
        ->> 'valueString' as ethnicity_text,
    communication ->> '$.language.coding[0].code' as language_code,
    address ->> 'city' as city,
    address ->> 'state' as state,
    address ->> 'postalCode' as postal_code,
    coalesce(try_cast(active as boolean), true) as is_active,
    {{ fhir_ref_id('general_practitioner_reference', 'Practitioner') }} as general_practitioner_id,
    {{ fhir_ref_id('managing_organization_reference', 'Organization') }} as managing_organization_id,
    {{ utc_timestamp('last_updated') }} as last_updated_at,
    {{ utc_timestamp('loaded_at') }} as loaded_at,
    export_id
from picked
