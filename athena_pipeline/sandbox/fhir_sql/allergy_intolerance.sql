-- AllergyIntolerance: RxNorm (drug) or SNOMED CT (substance) coded allergies.
WITH b AS (
    SELECT
        a.*,
        fid('allergy', a.allergy_id) AS fhir_id,
        coalesce(a.deleted_at, p.deleted_at) AS del,
        date_trunc('second', a.updated_at) AS lu
    FROM f.allergies a
    LEFT JOIN f.patients p ON p.patient_id = a.patient_id
)
SELECT
    'AllergyIntolerance' AS resource_type,
    fhir_id AS id,
    fid('E', patient_id) AS patient_id,
    lu AS last_updated,
    del AS deleted_at,
    concat(
        '{"resourceType":"AllergyIntolerance","id":"', fhir_id, '"',
        jmember('meta', jmeta(lu, 'us-core-allergyintolerance')),
        ',"clinicalStatus":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical",',
            '"code":"active","display":"Active"}]}',
        ',"verificationStatus":{"coding":[{"system":',
            '"http://terminology.hl7.org/CodeSystem/allergyintolerance-verification",',
            '"code":"confirmed","display":"Confirmed"}]}',
        ',"type":"allergy"',
        CASE WHEN upper(code_system) = 'RXNORM' THEN ',"category":["medication"]' END,
        jmember('criticality', jstr(criticality)),
        jmember('code', jconcept(CASE upper(code_system)
                                     WHEN 'RXNORM' THEN 'http://www.nlm.nih.gov/research/umls/rxnorm'
                                     WHEN 'SNOMED' THEN 'http://snomed.info/sct' END,
                                 code, display, display)),
        jmember('patient', jref('Patient', fid('E', patient_id))),
        jmember('recordedDate', '"' || fhir_date(recorded_date) || '"'),
        '}'
    ) AS resource
FROM b
