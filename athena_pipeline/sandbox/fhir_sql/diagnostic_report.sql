-- DiagnosticReport: one per laboratory Observation, the report whose single result it is.
-- Same id number, same lifecycle (deleted with its observation).
WITH b AS (
    SELECT
        o.*,
        fid('diagnosticreport', o.observation_id) AS fhir_id,
        coalesce(o.deleted_at, p.deleted_at) AS del,
        se.encounter_id IS NOT NULL AND se.deleted_at IS NULL AS enc_ok,
        date_trunc('second', greatest(o.updated_at, se.deleted_at)) AS lu
    FROM f.observations o
    LEFT JOIN f.patients p ON p.patient_id = o.patient_id
    LEFT JOIN st_encounter se ON se.encounter_id = o.encounter_id
    WHERE o.category = 'laboratory'
)
SELECT
    'DiagnosticReport' AS resource_type,
    fhir_id AS id,
    fid('E', patient_id) AS patient_id,
    lu AS last_updated,
    del AS deleted_at,
    concat(
        '{"resourceType":"DiagnosticReport","id":"', fhir_id, '"',
        jmember('meta', jmeta(lu, 'us-core-diagnosticreport-lab')),
        jmember('status', jstr(status)),
        ',"category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/v2-0074","code":"LAB",',
            '"display":"Laboratory"}]}]',
        jmember('code', jconcept('http://loinc.org', loinc, display, display)),
        jmember('subject', jref('Patient', fid('E', patient_id))),
        CASE WHEN enc_ok THEN jmember('encounter', jref('Encounter', fid('encounter', encounter_id))) END,
        ',"effectiveDateTime":"', fhir_instant(effective_at), '"',
        ',"issued":"', fhir_instant(created_at), '"',
        jmember('result', '[' || jref('Observation', fid('observation', observation_id)) || ']'),
        '}'
    ) AS resource
FROM b
