-- stg_fhir__medication_request_codings: one row per coding of the medication of a MedicationRequest, inline (medicationCodeableConcept) or from a contained Medication.
-- Value-set matching (seed value_sets) joins here, so a code counts whichever coding carries it.
{{ config(materialized='incremental', unique_key='medication_request_id',
          post_hook="{{ fhir_incremental_prune('medicationrequest', 'medication_request_id') }}") }}
{% set fields = [
    ('patient_reference', '$.subject.reference', 'text'),
    ('medication_concept', '$.medicationCodeableConcept', 'json'),
    ('medication_reference', '$.medicationReference.reference', 'text'),
    ('contained', '$.contained', 'list'),
] %}
{% set elements = [
    ('medication', "json_extract(coalesce(r.medication_concept, list_filter(r.contained, lambda m: '#' || (m ->> 'id') = r.medication_reference)[1] -> 'code'), '$.coding[*]')"),
] %}

{{ fhir_codings_model('medicationrequest', 'medication_request_id', fields, elements) }}
