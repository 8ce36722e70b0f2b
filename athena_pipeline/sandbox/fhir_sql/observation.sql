-- Observation: vitals, labs, screenings, smoking status. Blood pressure is the US Core panel
-- 85354-9 with systolic (8480-6, `value`) and diastolic (8462-4, `value2`) components.
-- Coded answers: LOINC answer codes (LA...) for screenings, SNOMED CT otherwise (tobacco).
--
-- Observations are the bulk of a world (millions of rows), so the parts of the JSON that depend
-- only on the code (profile, status, category, code) and on the value's unit/answer are built
-- once per distinct combination (`head`, `val`) and joined back, not rebuilt per row.
WITH head AS (
    SELECT
        kind, category, loinc, display, status,
        concat(
            '"profile":["http://hl7.org/fhir/us/core/StructureDefinition/',
            CASE
                WHEN kind = 'bp' THEN 'us-core-blood-pressure'
                WHEN kind = 'bmi' THEN 'us-core-bmi'
                WHEN kind = 'weight' THEN 'us-core-body-weight'
                WHEN kind = 'height' THEN 'us-core-body-height'
                WHEN kind = 'tobacco' THEN 'us-core-smokingstatus'
                WHEN category = 'laboratory' THEN 'us-core-observation-lab'
                WHEN category = 'survey' THEN 'us-core-observation-screening-assessment'
                WHEN category = 'social-history' THEN 'us-core-observation-social-history'
                ELSE 'us-core-vital-signs'
            END, '"]}',
            jmember('status', jstr(status)),
            jmember('category', '[' || jconcept('http://terminology.hl7.org/CodeSystem/observation-category', category,
                CASE category WHEN 'vital-signs' THEN 'Vital Signs' WHEN 'laboratory' THEN 'Laboratory'
                              WHEN 'survey' THEN 'Survey' WHEN 'social-history' THEN 'Social History' END,
                NULL) || ']'),
            jmember('code', jconcept('http://loinc.org', loinc, display, display))
        ) AS head_json
    FROM (SELECT DISTINCT kind, category, loinc, display, status FROM f.observations)
),
val AS (
    SELECT
        unit, value_code, value_display,
        CASE WHEN unit IS NOT NULL
            THEN ',"unit":' || jstr(unit) || ',"system":"http://unitsofmeasure.org","code":' || jstr(unit) END
            AS unit_json,
        CASE WHEN value_code IS NOT NULL
            THEN jconcept(CASE WHEN value_code LIKE 'LA%' THEN 'http://loinc.org' ELSE 'http://snomed.info/sct' END,
                          value_code, value_display, coalesce(value_display, value_code)) END
            AS answer_json
    FROM (SELECT DISTINCT unit, value_code, value_display FROM f.observations)
),
b AS (
    SELECT
        o.observation_id, o.patient_id, o.encounter_id, o.kind, o.value, o.value2, o.effective_at, o.created_at,
        h.head_json, v.unit_json, v.answer_json,
        fid('observation', o.observation_id) AS fhir_id,
        coalesce(o.deleted_at, p.deleted_at) AS del,
        se.encounter_id IS NOT NULL AND se.deleted_at IS NULL AS enc_ok,
        date_trunc('second', greatest(o.updated_at, se.deleted_at)) AS lu
    FROM f.observations o
    JOIN head h ON h.kind = o.kind AND h.category = o.category AND h.loinc = o.loinc
        AND h.display = o.display AND h.status = o.status
    JOIN val v ON v.unit IS NOT DISTINCT FROM o.unit AND v.value_code IS NOT DISTINCT FROM o.value_code
        AND v.value_display IS NOT DISTINCT FROM o.value_display
    LEFT JOIN f.patients p ON p.patient_id = o.patient_id
    LEFT JOIN st_encounter se ON se.encounter_id = o.encounter_id
)
SELECT
    'Observation' AS resource_type,
    fhir_id AS id,
    fid('E', patient_id) AS patient_id,
    lu AS last_updated,
    del AS deleted_at,
    concat(
        '{"resourceType":"Observation","id":"', fhir_id,
        '","meta":{"lastUpdated":"', fhir_instant(lu), '",', head_json,
        ',"subject":{"reference":"Patient/', fid('E', patient_id), '"}',
        CASE WHEN enc_ok THEN concat(',"encounter":{"reference":"Encounter/', fid('encounter', encounter_id), '"}') END,
        ',"effectiveDateTime":"', fhir_instant(effective_at), '"',
        ',"issued":"', fhir_instant(created_at), '"',
        CASE WHEN kind = 'bp' THEN concat(
            ',"component":[{"code":{"coding":[{"system":"http://loinc.org","code":"8480-6",',
                '"display":"Systolic blood pressure"}],"text":"Systolic blood pressure"}',
                jmember('valueQuantity', '{"value":' || CAST(value AS VARCHAR)
                    || coalesce(unit_json, ',"unit":"mm[Hg]","system":"http://unitsofmeasure.org","code":"mm[Hg]"') || '}'),
            '},{"code":{"coding":[{"system":"http://loinc.org","code":"8462-4",',
                '"display":"Diastolic blood pressure"}],"text":"Diastolic blood pressure"}',
                jmember('valueQuantity', '{"value":' || CAST(value2 AS VARCHAR)
                    || coalesce(unit_json, ',"unit":"mm[Hg]","system":"http://unitsofmeasure.org","code":"mm[Hg]"') || '}'),
            '}]')
        WHEN value IS NOT NULL THEN concat(
            jmember('valueQuantity', '{"value":' || CAST(value AS VARCHAR) || coalesce(unit_json, '') || '}'),
            -- a scored screening may also carry its coded result
            jmember('interpretation', '[' || answer_json || ']'))
        ELSE jmember('valueCodeableConcept', answer_json) END,
        '}'
    ) AS resource
FROM b
