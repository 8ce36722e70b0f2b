-- Practitioner: US Core, NPI identifier, degree (HL7 v2 table 0360) as qualification.
SELECT
    'Practitioner' AS resource_type,
    fid('Provider', p.provider_id) AS id,
    NULL::VARCHAR AS patient_id,
    date_trunc('second', p.updated_at) AS last_updated,
    p.deleted_at,
    concat(
        '{"resourceType":"Practitioner","id":"', fid('Provider', p.provider_id), '"',
        jmember('meta', jmeta(date_trunc('second', p.updated_at), 'us-core-practitioner')),
        jmember('identifier', '[{"system":"http://hl7.org/fhir/sid/us-npi","value":' || jstr(p.npi) || '}]'),
        ',"active":true',
        jmember('name', '[{"use":"official","family":' || jstr(p.last_name) || ',"given":[' || jstr(p.first_name)
                        || ']' || coalesce(',"suffix":[' || jstr(p.provider_type) || ']', '') || '}]'),
        jmember('gender', jstr(CASE p.sex WHEN 'M' THEN 'male' WHEN 'F' THEN 'female' ELSE 'unknown' END)),
        jmember('qualification', '[{"code":' || jconcept(
            'http://terminology.hl7.org/CodeSystem/v2-0360|2.7', p.provider_type,
            CASE p.provider_type
                WHEN 'MD' THEN 'Doctor of Medicine'
                WHEN 'DO' THEN 'Doctor of Osteopathy'
                WHEN 'NP' THEN 'Nurse Practitioner'
                WHEN 'PA' THEN 'Physician Assistant'
            END,
            p.provider_type) || '}]'),
        '}'
    ) AS resource
FROM f.providers p
