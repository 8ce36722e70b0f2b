-- stg_fhir__appointments: one row per FHIR Appointment, with the patient, practitioner and location
-- taken from the participants (each participant's actor reference says which is which).
{{ config(materialized='incremental', unique_key='appointment_id',
          post_hook="{{ fhir_incremental_prune('appointment', 'appointment_id') }}") }}
{% set fields = [
    ('participants', '$.participant', 'list'),
    ('status', '$.status', 'text'),
    ('appointment_type_text', '$.appointmentType.text', 'text'),
    ('appointment_type_display', '$.appointmentType.coding[0].display', 'text'),
    ('appointment_type_code', '$.appointmentType.coding[0].code', 'text'),
    ('service_type_code', '$.serviceType[0].coding[0].code', 'text'),
    ('start_text', '$.start', 'text'),
    ('end_text', '$.end', 'text'),
    ('minutes_duration', '$.minutesDuration', 'text'),
    ('created_text', '$.created', 'text'),
    ('cancelation_reason_text', '$.cancelationReason.text', 'text'),
    ('cancelation_reason_code', '$.cancelationReason.coding[0].code', 'text'),
] %}

with source as (
    select * from {{ fhir_incremental_source('appointment') }}
),

parsed as (
    select id, last_updated, loaded_at, export_id, {{ fhir_parse(fields) }} as _f
    from source
),

extracted as (
    select id, last_updated, loaded_at, export_id, {{ fhir_fields(fields) }}
    from parsed
),

actors as (
    select
        *,
        list_filter(list_transform(participants, lambda p: p ->> '$.actor.reference'), lambda r: r is not null)
            as actor_references
    from extracted
),

picked as (
    select
        *,
        list_filter(actor_references, lambda r: {{ fhir_ref_type('r') }} = 'Patient' or r like 'urn:uuid:%')[1]
            as patient_reference,
        list_filter(actor_references, lambda r: {{ fhir_ref_type('r') }} = 'Practitioner')[1] as practitioner_reference,
        list_filter(actor_references, lambda r: {{ fhir_ref_type('r') }} = 'Location')[1] as location_reference
    from actors
)

select
    id as appointment_id,
    {{ fhir_ref_id('patient_reference', 'Patient') }} as patient_id,
    {{ fhir_ref_id('practitioner_reference', 'Practitioner') }} as practitioner_id,
    {{ fhir_ref_id('location_reference', 'Location') }} as location_id,
    status,
    coalesce(appointment_type_text, appointment_type_display, appointment_type_code) as appointment_type,
    service_type_code,
    {{ fhir_timestamp('start_text') }} as start_at,
    {{ fhir_date('start_text') }} as start_date,
    {{ fhir_timestamp('end_text') }} as end_at,
    try_cast(minutes_duration as integer) as minutes_duration,
    {{ fhir_timestamp('created_text') }} as booked_at,
    coalesce(cancelation_reason_text, cancelation_reason_code) as cancelation_reason,
    {{ utc_timestamp('last_updated') }} as last_updated_at,
    {{ utc_timestamp('loaded_at') }} as loaded_at,
    export_id
from picked
