-- Patient: US Core Patient with race/ethnicity/birthsex extensions. References to a deleted
-- provider or department are left out (and lastUpdated moves to when they went away).
WITH b AS (
    SELECT
        p.*,
        fid('E', p.patient_id) AS fhir_id,
        pr.provider_id IS NOT NULL AND pr.deleted_at IS NULL AS gp_ok,
        d.department_id IS NOT NULL AND d.deleted_at IS NULL AS org_ok,
        date_trunc('second', greatest(p.updated_at, pr.deleted_at, d.deleted_at)) AS lu,
        coalesce(r.display, CASE p.race WHEN 'UNK' THEN 'Unknown' WHEN 'ASKU' THEN 'Asked but no answer' END)
            AS race_display,
        coalesce(r.omb, p.race IN ('UNK', 'ASKU')) AS race_omb,
        eth.display AS eth_display,
        lang.display AS lang_display
    FROM f.patients p
    LEFT JOIN f.providers pr ON pr.provider_id = p.primary_provider_id
    LEFT JOIN f.departments d ON d.department_id = p.department_id
    LEFT JOIN lk_race r ON r.code = p.race
    LEFT JOIN lk_ethnicity eth ON eth.code = p.ethnicity
    LEFT JOIN lk_language lang ON lang.code = p.language
)
SELECT
    'Patient' AS resource_type,
    fhir_id AS id,
    fhir_id AS patient_id,
    lu AS last_updated,
    deleted_at,
    concat(
        '{"resourceType":"Patient","id":"', fhir_id, '"',
        jmember('meta', jmeta(lu, 'us-core-patient')),
        ',"extension":[',
            '{"url":"http://hl7.org/fhir/us/core/StructureDefinition/us-core-race","extension":[',
                '{"url":"', CASE WHEN race_omb THEN 'ombCategory' ELSE 'detailed' END, '","valueCoding":',
                jcoding(CASE WHEN race IN ('UNK', 'ASKU') THEN 'http://terminology.hl7.org/CodeSystem/v3-NullFlavor'
                             ELSE 'urn:oid:2.16.840.1.113883.6.238' END, race, race_display), '},',
                '{"url":"text","valueString":', jstr(coalesce(race_display, race)), '}]},',
            '{"url":"http://hl7.org/fhir/us/core/StructureDefinition/us-core-ethnicity","extension":[',
                '{"url":"ombCategory","valueCoding":',
                jcoding('urn:oid:2.16.840.1.113883.6.238', ethnicity, eth_display), '},',
                '{"url":"text","valueString":', jstr(coalesce(eth_display, ethnicity)), '}]},',
            '{"url":"http://hl7.org/fhir/us/core/StructureDefinition/us-core-birthsex","valueCode":', jstr(sex), '}',
        ']',
        ',"identifier":[{"use":"usual","type":',
            jconcept('http://terminology.hl7.org/CodeSystem/v2-0203', 'MR', 'Medical Record Number',
                     'Medical Record Number'),
            ',"system":"urn:athenahealth:athenanet:patient:{pid}","value":"', patient_id, '"}]',
        jmember('active', jbool(status = 'a')),
        jmember('name', '[{"use":"official","family":' || jstr(last_name) || ',"given":[' || jstr(first_name) || ']}]'),
        jmember('telecom', '[{"system":"phone","value":' || jstr(phone) || ',"use":"home"}]'),
        jmember('gender', jstr(CASE sex WHEN 'M' THEN 'male' WHEN 'F' THEN 'female' ELSE 'unknown' END)),
        jmember('birthDate', '"' || fhir_date(dob) || '"'),
        jmember('deceasedDateTime', '"' || fhir_date(deceased_date) || '"'),
        CASE WHEN status = 'd' AND deceased_date IS NULL THEN ',"deceasedBoolean":true' END,
        jmember('address', '[{"use":"home","type":"physical","line":[' || jstr(address) || '],"city":' || jstr(city)
                           || ',"state":' || jstr(state) || ',"postalCode":' || jstr(zip) || ',"country":"US"}]'),
        jmember('communication', '[{"language":'
            || jconcept('urn:ietf:bcp:47', language, lang_display, coalesce(lang_display, language))
            || ',"preferred":true}]'),
        CASE WHEN gp_ok THEN jmember('generalPractitioner',
            '[' || jref('Practitioner', fid('Provider', primary_provider_id)) || ']') END,
        CASE WHEN org_ok THEN jmember('managingOrganization',
            jref('Organization', fid('Department', department_id))) END,
        '}'
    ) AS resource
FROM b
