-- stg_fhir__document_references: one row per FHIR DocumentReference (clinical notes). Metadata only:
-- the attachment content (base64 note text, PHI, often large) is deliberately not staged.
{{ config(materialized='incremental', unique_key='document_reference_id',
          post_hook="{{ fhir_incremental_prune('documentreference', 'document_reference_id') }}") }}
{% set fields = [
    ('codings', '$.type.coding', 'list'),
    ('type_text', '$.type.text', 'text'),
    ('status', '$.status', 'text'),
    ('doc_status', '$.docStatus', 'text'),
    ('category', '$.category[0].coding[0].code', 'text'),
    ('subject_reference', '$.subject.reference', 'text'),
    ('encounter_reference', '$.context.encounter[0].reference', 'text'),
    ('document_date', '$.date', 'text'),
    ('author_reference', '$.author[0].reference', 'text'),
    ('custodian_reference', '$.custodian.reference', 'text'),
    ('period_start', '$.context.period.start', 'text'),
    ('period_end', '$.context.period.end', 'text'),
    ('content_type', '$.content[0].attachment.contentType', 'text'),
    ('contents', '$.content', 'list'),
] %}

with source as (
    select * from {{ fhir_incremental_source('documentreference') }}
),

parsed as (
    select id, last_updated, loaded_at, export_id, {{ fhir_parse(fields) }} as _f
    from source
),

extracted as (
    select id, last_updated, loaded_at, export_id, {{ fhir_fields(fields) }}
    from parsed
),

coded as (
    select *, coalesce({{ fhir_coding_in('codings', ['loinc']) }}, codings[1]) as coding
    from extracted
)

select
    id as document_reference_id,
    {{ fhir_ref_id('subject_reference', 'Patient') }} as patient_id,
    {{ fhir_ref_id('encounter_reference', 'Encounter') }} as encounter_id,
    status,
    doc_status,
    category,
    coding ->> 'code' as type_code,
    {{ fhir_code_system("(coding ->> 'system')") }} as type_code_system,
    coalesce(type_text, coding ->> 'display') as type_display,
    {{ fhir_timestamp('document_date') }} as document_at,
    {{ fhir_ref_id('author_reference', 'Practitioner') }} as author_practitioner_id,
    {{ fhir_ref_identifier('author_reference', 'http://hl7.org/fhir/sid/us-npi') }} as author_npi,
    {{ fhir_ref_id('custodian_reference', 'Organization') }} as custodian_organization_id,
    {{ fhir_timestamp('period_start') }} as period_start_at,
    {{ fhir_timestamp('period_end') }} as period_end_at,
    content_type,
    cast(coalesce(len(contents), 0) as integer) as content_count,
    {{ utc_timestamp('last_updated') }} as last_updated_at,
    {{ utc_timestamp('loaded_at') }} as loaded_at,
    export_id
from coded
