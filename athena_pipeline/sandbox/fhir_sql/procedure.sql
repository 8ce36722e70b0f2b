-- Procedure: only what the chart knows (in_fhir). Rows known only to billing are not exported
-- at all (not even as deletions): that gap is what claims-based measure logic must fill.
WITH b AS (
    SELECT
        pc.*,
        fid('procedure', pc.procedure_id) AS fhir_id,
        coalesce(pc.deleted_at, p.deleted_at) AS del,
        se.encounter_id IS NOT NULL AND se.deleted_at IS NULL AS enc_ok,
        date_trunc('second', greatest(pc.updated_at, se.deleted_at)) AS lu
    FROM f.procedures pc
    LEFT JOIN f.patients p ON p.patient_id = pc.patient_id
    LEFT JOIN st_encounter se ON se.encounter_id = pc.encounter_id
    WHERE pc.in_fhir
)
SELECT
    'Procedure' AS resource_type,
    fhir_id AS id,
    fid('E', patient_id) AS patient_id,
    lu AS last_updated,
    del AS deleted_at,
    concat(
        '{"resourceType":"Procedure","id":"', fhir_id, '"',
        jmember('meta', jmeta(lu, 'us-core-procedure')),
        ',"status":"completed"',
        jmember('code', jconcept(
            CASE upper(code_system)
                WHEN 'CPT' THEN 'http://www.ama-assn.org/go/cpt'
                WHEN 'HCPCS' THEN 'https://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets'
                WHEN 'SNOMED' THEN 'http://snomed.info/sct'
                WHEN 'LOINC' THEN 'http://loinc.org'
                WHEN 'ICD10PCS' THEN 'http://www.cms.gov/Medicare/Coding/ICD10'
            END,
            code, display, display)),
        jmember('subject', jref('Patient', fid('E', patient_id))),
        CASE WHEN enc_ok THEN jmember('encounter', jref('Encounter', fid('encounter', encounter_id))) END,
        jmember('performedDateTime', '"' || fhir_date(performed_date) || '"'),
        '}'
    ) AS resource
FROM b
