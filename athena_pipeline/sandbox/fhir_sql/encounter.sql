-- Encounter: ambulatory visit (VR for telehealth) typed by the billed visit CPT.
WITH b AS (
    SELECT
        e.*,
        fid('encounter', e.encounter_id) AS fhir_id,
        coalesce(e.deleted_at, p.deleted_at) AS del,
        pr.provider_id IS NOT NULL AND pr.deleted_at IS NULL AS prov_ok,
        d.department_id IS NOT NULL AND d.deleted_at IS NULL AS dept_ok,
        sa.appointment_id IS NOT NULL AND sa.deleted_at IS NULL AS appt_ok,
        date_trunc('second', greatest(e.updated_at, pr.deleted_at, d.deleted_at, sa.deleted_at)) AS lu,
        concat('{"start":"', fhir_instant(e.start_at), '","end":"', fhir_instant(e.end_at), '"}') AS period_json
    FROM f.encounters e
    LEFT JOIN f.patients p ON p.patient_id = e.patient_id
    LEFT JOIN f.providers pr ON pr.provider_id = e.provider_id
    LEFT JOIN f.departments d ON d.department_id = e.department_id
    LEFT JOIN st_appointment sa ON sa.appointment_id = e.appointment_id
)
SELECT
    'Encounter' AS resource_type,
    fhir_id AS id,
    fid('E', patient_id) AS patient_id,
    lu AS last_updated,
    del AS deleted_at,
    concat(
        '{"resourceType":"Encounter","id":"', fhir_id, '"',
        ',"meta":{"lastUpdated":"', fhir_instant(lu),
            '","profile":["http://hl7.org/fhir/us/core/StructureDefinition/us-core-encounter"]}',
        ',"status":"', CASE status WHEN 'CLOSED' THEN 'finished' WHEN 'OPEN' THEN 'in-progress' ELSE 'unknown' END, '"',
        ',"class":', CASE WHEN encounter_type = 'TELEHEALTH'
            THEN '{"system":"http://terminology.hl7.org/CodeSystem/v3-ActCode","code":"VR","display":"virtual"}'
            ELSE '{"system":"http://terminology.hl7.org/CodeSystem/v3-ActCode","code":"AMB","display":"ambulatory"}' END,
        jmember('type', '[' || jconcept('http://www.ama-assn.org/go/cpt', visit_cpt, NULL,
            CASE encounter_type WHEN 'VISIT' THEN 'Office visit'
                                WHEN 'PREVENTIVE' THEN 'Preventive visit'
                                WHEN 'TELEHEALTH' THEN 'Telehealth visit'
                                ELSE encounter_type END) || ']'),
        ',"subject":{"reference":"Patient/', fid('E', patient_id), '"}',
        CASE WHEN prov_ok THEN concat(
            ',"participant":[{"type":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/v3-ParticipationType",',
            '"code":"PPRF","display":"primary performer"}],"text":"primary performer"}],"period":', period_json,
            ',"individual":{"reference":"Practitioner/', fid('Provider', provider_id), '"}}]') END,
        CASE WHEN appt_ok THEN concat(',"appointment":[{"reference":"Appointment/',
                                      fid('Appointment', appointment_id), '"}]') END,
        ',"period":', period_json,
        CASE WHEN dept_ok THEN concat(
            ',"location":[{"location":{"reference":"Location/', fid('Department', department_id), '"}}]',
            ',"serviceProvider":{"reference":"Organization/', fid('Department', department_id), '"}') END,
        '}'
    ) AS resource
FROM b
