-- DocumentReference: one progress note per CLOSED encounter. The attachment is a one-line
-- text/plain stub carrying only ids, so the export has real base64 content without PHI.
WITH b AS (
    SELECT
        e.*,
        fid('document', e.encounter_id) AS fhir_id,
        coalesce(e.deleted_at, p.deleted_at) AS del,
        pr.provider_id IS NOT NULL AND pr.deleted_at IS NULL AS prov_ok,
        date_trunc('second', greatest(e.updated_at, pr.deleted_at)) AS lu,
        fhir_instant(coalesce(e.closed_at, e.end_at)) AS note_at
    FROM f.encounters e
    LEFT JOIN f.patients p ON p.patient_id = e.patient_id
    LEFT JOIN f.providers pr ON pr.provider_id = e.provider_id
    WHERE e.status = 'CLOSED'
)
SELECT
    'DocumentReference' AS resource_type,
    fhir_id AS id,
    fid('E', patient_id) AS patient_id,
    lu AS last_updated,
    del AS deleted_at,
    concat(
        '{"resourceType":"DocumentReference","id":"', fhir_id, '"',
        jmember('meta', jmeta(lu, 'us-core-documentreference')),
        ',"status":"current","docStatus":"final"',
        ',"type":{"coding":[{"system":"http://loinc.org","code":"11506-3","display":"Progress note"}],',
            '"text":"Progress note"}',
        ',"category":[{"coding":[{"system":"http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-category",',
            '"code":"clinical-note","display":"Clinical Note"}]}]',
        jmember('subject', jref('Patient', fid('E', patient_id))),
        ',"date":"', note_at, '"',
        CASE WHEN prov_ok THEN jmember('author', '[' || jref('Practitioner', fid('Provider', provider_id)) || ']') END,
        ',"custodian":{"reference":"Organization/a-1.Practice-{pid}"}',
        ',"content":[{"attachment":{"contentType":"text/plain","data":"',
            to_base64(encode('Visit note for encounter ' || CAST(encounter_id AS VARCHAR))),
            '","creation":"', note_at, '"}}]',
        ',"context":{"encounter":[', jref('Encounter', fid('encounter', encounter_id)), ']',
            jmember('period', jperiod(fhir_instant(start_at), fhir_instant(end_at))), '}',
        '}'
    ) AS resource
FROM b
