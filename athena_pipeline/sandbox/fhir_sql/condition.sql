-- Condition: problem-list entries and encounter diagnoses, coded in ICD-10-CM and (when mapped)
-- SNOMED CT so quality measures can use either value set.
--
-- The code-dependent middle of the JSON (profile, statuses, category, code) is built once per
-- distinct combination (`head`) and joined back: cheaper than rebuilding it on every row.
WITH head AS (
    SELECT
        category, clinical_status, icd10_code, snomed_code, description,
        concat(
            '"profile":["http://hl7.org/fhir/us/core/StructureDefinition/',
            CASE WHEN category = 'encounter-diagnosis' THEN 'us-core-condition-encounter-diagnosis'
                 ELSE 'us-core-condition-problems-health-concerns' END, '"]}',
            jmember('clinicalStatus', jconcept('http://terminology.hl7.org/CodeSystem/condition-clinical',
                                               clinical_status, NULL, NULL)),
            ',"verificationStatus":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/condition-ver-status",',
                '"code":"confirmed","display":"Confirmed"}]}',
            jmember('category', '[' || jconcept('http://terminology.hl7.org/CodeSystem/condition-category', category,
                CASE category WHEN 'encounter-diagnosis' THEN 'Encounter Diagnosis'
                              WHEN 'problem-list-item' THEN 'Problem List Item' END, NULL) || ']'),
            ',"code":{"coding":[', jcoding('http://hl7.org/fhir/sid/icd-10-cm', icd10_code, description),
                ',' || jcoding('http://snomed.info/sct', snomed_code, NULL),
                ']', jmember('text', jstr(description)), '}'
        ) AS head_json
    FROM (SELECT DISTINCT category, clinical_status, icd10_code, snomed_code, description FROM f.conditions)
),
b AS (
    SELECT
        c.condition_id, c.patient_id, c.encounter_id, c.onset_date, c.abatement_date, c.created_at,
        h.head_json,
        fid('condition', c.condition_id) AS fhir_id,
        coalesce(c.deleted_at, p.deleted_at) AS del,
        se.encounter_id IS NOT NULL AND se.deleted_at IS NULL AS enc_ok,
        date_trunc('second', greatest(c.updated_at, se.deleted_at)) AS lu
    FROM f.conditions c
    JOIN head h ON h.category = c.category AND h.clinical_status = c.clinical_status
        AND h.icd10_code = c.icd10_code AND h.snomed_code IS NOT DISTINCT FROM c.snomed_code
        AND h.description = c.description
    LEFT JOIN f.patients p ON p.patient_id = c.patient_id
    LEFT JOIN st_encounter se ON se.encounter_id = c.encounter_id
)
SELECT
    'Condition' AS resource_type,
    fhir_id AS id,
    fid('E', patient_id) AS patient_id,
    lu AS last_updated,
    del AS deleted_at,
    concat(
        '{"resourceType":"Condition","id":"', fhir_id,
        '","meta":{"lastUpdated":"', fhir_instant(lu), '",', head_json,
        ',"subject":{"reference":"Patient/', fid('E', patient_id), '"}',
        CASE WHEN enc_ok THEN concat(',"encounter":{"reference":"Encounter/', fid('encounter', encounter_id), '"}') END,
        ',"onsetDateTime":"', fhir_date(onset_date), '"',
        CASE WHEN abatement_date IS NOT NULL THEN concat(',"abatementDateTime":"', fhir_date(abatement_date), '"') END,
        ',"recordedDate":"', fhir_instant(created_at), '"',
        '}'
    ) AS resource
FROM b
