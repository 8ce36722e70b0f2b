-- Immunization: CVX-coded administrations (and documented not-done events).
WITH b AS (
    SELECT
        i.*,
        fid('immunization', i.immunization_id) AS fhir_id,
        coalesce(i.deleted_at, p.deleted_at) AS del,
        se.encounter_id IS NOT NULL AND se.deleted_at IS NULL AS enc_ok,
        date_trunc('second', greatest(i.updated_at, se.deleted_at)) AS lu
    FROM f.immunizations i
    LEFT JOIN f.patients p ON p.patient_id = i.patient_id
    LEFT JOIN st_encounter se ON se.encounter_id = i.encounter_id
)
SELECT
    'Immunization' AS resource_type,
    fhir_id AS id,
    fid('E', patient_id) AS patient_id,
    lu AS last_updated,
    del AS deleted_at,
    concat(
        '{"resourceType":"Immunization","id":"', fhir_id, '"',
        jmember('meta', jmeta(lu, 'us-core-immunization')),
        jmember('status', jstr(status)),
        jmember('vaccineCode', jconcept('http://hl7.org/fhir/sid/cvx', cvx, display, display)),
        jmember('patient', jref('Patient', fid('E', patient_id))),
        CASE WHEN enc_ok THEN jmember('encounter', jref('Encounter', fid('encounter', encounter_id))) END,
        jmember('occurrenceDateTime', '"' || fhir_date(occurrence_date) || '"'),
        ',"primarySource":true',
        '}'
    ) AS resource
FROM b
