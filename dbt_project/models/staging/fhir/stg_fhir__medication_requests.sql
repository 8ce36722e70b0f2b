-- stg_fhir__medication_requests: one row per FHIR MedicationRequest. The medication is either inline
-- (medicationCodeableConcept) or a reference; a reference to a contained Medication ("#med1") is
-- resolved to that Medication's code, so RxNorm codes are found either way.
{{ config(materialized='incremental', unique_key='medication_request_id',
          post_hook="{{ fhir_incremental_prune('medicationrequest', 'medication_request_id') }}") }}
{% set fields = [
    ('medication_concept', '$.medicationCodeableConcept', 'json'),
    ('medication_reference', '$.medicationReference.reference', 'text'),
    ('contained', '$.contained', 'list'),
    ('status', '$.status', 'text'),
    ('intent', '$.intent', 'text'),
    ('category', '$.category[0].coding[0].code', 'text'),
    ('subject_reference', '$.subject.reference', 'text'),
    ('encounter_reference', '$.encounter.reference', 'text'),
    ('authored_on', '$.authoredOn', 'text'),
    ('requester_reference', '$.requester.reference', 'text'),
    ('reason_reference', '$.reasonReference[0].reference', 'text'),
    ('reason_code', '$.reasonCode[0].coding[0].code', 'text'),
] %}

with source as (
    select * from {{ fhir_incremental_source('medicationrequest') }}
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
        coalesce(
            medication_concept,
            list_filter(contained, lambda m: '#' || (m ->> 'id') = medication_reference)[1] -> 'code'
        ) as medication
    from extracted
),

coded as (
    select *, json_extract(medication, '$.coding[*]') as codings
    from resolved
)

select
    id as medication_request_id,
    {{ fhir_ref_id('subject_reference', 'Patient') }} as patient_id,
    {{ fhir_ref_id('encounter_reference', 'Encounter') }} as encounter_id,
    status,
    intent,
    category,
    {{ fhir_coding_in('codings', ['rxnorm']) }} ->> 'code' as rxnorm_code,
    coalesce(medication ->> 'text', codings[1] ->> 'display') as medication_display,
    case when medication_reference like '#%' then null else {{ fhir_ref_id('medication_reference', 'Medication') }} end
        as medication_id,
    {{ fhir_timestamp('authored_on') }} as authored_at,
    {{ fhir_date('authored_on') }} as authored_date,
    {{ fhir_ref_id('requester_reference', 'Practitioner') }} as requester_practitioner_id,
    {{ fhir_ref_identifier('requester_reference', 'http://hl7.org/fhir/sid/us-npi') }} as requester_npi,
    {{ fhir_ref_id('reason_reference', 'Condition') }} as reason_condition_id,
    reason_code,
    {{ utc_timestamp('last_updated') }} as last_updated_at,
    {{ utc_timestamp('loaded_at') }} as loaded_at,
    export_id
from coded
