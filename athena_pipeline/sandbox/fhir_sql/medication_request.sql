-- MedicationRequest: RxNorm-coded orders with the ordering provider as requester.
WITH b AS (
    SELECT
        m.*,
        fid('medicationrequest', m.medication_request_id) AS fhir_id,
        coalesce(m.deleted_at, p.deleted_at) AS del,
        se.encounter_id IS NOT NULL AND se.deleted_at IS NULL AS enc_ok,
        pr.provider_id IS NOT NULL AND pr.deleted_at IS NULL AS prov_ok,
        date_trunc('second', greatest(m.updated_at, se.deleted_at, pr.deleted_at)) AS lu
    FROM f.medication_requests m
    LEFT JOIN f.patients p ON p.patient_id = m.patient_id
    LEFT JOIN st_encounter se ON se.encounter_id = m.encounter_id
    LEFT JOIN f.providers pr ON pr.provider_id = m.provider_id
)
SELECT
    'MedicationRequest' AS resource_type,
    fhir_id AS id,
    fid('E', patient_id) AS patient_id,
    lu AS last_updated,
    del AS deleted_at,
    concat(
        '{"resourceType":"MedicationRequest","id":"', fhir_id, '"',
        jmember('meta', jmeta(lu, 'us-core-medicationrequest')),
        jmember('status', jstr(status)),
        ',"intent":"order"',
        ',"category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/medicationrequest-category",',
            '"code":"community","display":"Community"}]}]',
        ',"reportedBoolean":false',
        jmember('medicationCodeableConcept', jconcept('http://www.nlm.nih.gov/research/umls/rxnorm',
                                                      rxnorm, display, display)),
        jmember('subject', jref('Patient', fid('E', patient_id))),
        CASE WHEN enc_ok THEN jmember('encounter', jref('Encounter', fid('encounter', encounter_id))) END,
        jmember('authoredOn', '"' || fhir_date(authored_on) || '"'),
        CASE WHEN prov_ok THEN jmember('requester', jref('Practitioner', fid('Provider', provider_id))) END,
        '}'
    ) AS resource
FROM b
