-- Appointment: athena status mapped to FHIR. 'o' (open) in the past, or any flagged no-show, is
-- `noshow`; `{current_date}` is the world clock's date.
WITH b AS (
    SELECT
        a.*,
        fid('Appointment', a.appointment_id) AS fhir_id,
        coalesce(a.deleted_at, p.deleted_at) AS del,
        pr.provider_id IS NOT NULL AND pr.deleted_at IS NULL AS prov_ok,
        d.department_id IS NOT NULL AND d.deleted_at IS NULL AS loc_ok,
        date_trunc('second', greatest(a.updated_at, pr.deleted_at, d.deleted_at)) AS lu,
        CASE
            WHEN a.status = 'x' THEN 'cancelled'
            WHEN a.is_no_show OR (a.status = 'o' AND a.appointment_date < DATE '{current_date}') THEN 'noshow'
            WHEN a.status = '2' THEN 'checked-in'
            WHEN a.status IN ('3', '4') THEN 'fulfilled'
            ELSE 'booked'
        END AS fhir_status
    FROM f.appointments a
    LEFT JOIN f.patients p ON p.patient_id = a.patient_id
    LEFT JOIN f.providers pr ON pr.provider_id = a.provider_id
    LEFT JOIN f.departments d ON d.department_id = a.department_id
)
SELECT
    'Appointment' AS resource_type,
    fhir_id AS id,
    fid('E', patient_id) AS patient_id,
    lu AS last_updated,
    del AS deleted_at,
    concat(
        '{"resourceType":"Appointment","id":"', fhir_id, '"',
        jmember('meta', jmeta(lu, NULL)),
        ',"status":"', fhir_status, '"',
        CASE WHEN status = 'x' THEN jmember('cancelationReason', jtext(cancel_reason)) END,
        jmember('appointmentType', jtext(appointment_type)),
        ',"start":"', fhir_instant(start_time), '"',
        ',"end":"', fhir_instant(start_time + to_minutes(duration_minutes)), '"',
        jmember('minutesDuration', CAST(duration_minutes AS VARCHAR)),
        jmember('created', '"' || fhir_instant(booked_at) || '"'),
        ',"participant":[',
            '{"actor":', jref('Patient', fid('E', patient_id)), ',"required":"required","status":"accepted"}',
            CASE WHEN prov_ok THEN ',{"type":[' || jconcept('http://terminology.hl7.org/CodeSystem/v3-ParticipationType',
                                                            'PPRF', 'primary performer', NULL)
                || '],"actor":' || jref('Practitioner', fid('Provider', provider_id))
                || ',"required":"required","status":"accepted"}' END,
            CASE WHEN loc_ok THEN ',{"actor":' || jref('Location', fid('Department', department_id))
                || ',"required":"required","status":"accepted"}' END,
        ']',
        '}'
    ) AS resource
FROM b
