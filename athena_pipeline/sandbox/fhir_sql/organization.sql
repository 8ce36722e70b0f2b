-- Organization: the practice (a-1.Practice-{pid}, athena's tenancy object) and one per department,
-- each department partOf the practice. The practice row is never deleted.
SELECT
    'Organization' AS resource_type,
    'a-1.Practice-' || pr.practice_id AS id,
    NULL::VARCHAR AS patient_id,
    date_trunc('second', pr.updated_at) AS last_updated,
    NULL::TIMESTAMP AS deleted_at,
    concat(
        '{"resourceType":"Organization","id":"a-1.Practice-', pr.practice_id, '"',
        jmember('meta', jmeta(date_trunc('second', pr.updated_at), 'us-core-organization')),
        ',"identifier":[{"system":"urn:athenahealth:athenanet:practice","value":"', pr.practice_id, '"}]',
        ',"active":true',
        jmember('type', '[' || jconcept('http://terminology.hl7.org/CodeSystem/organization-type', 'prov',
                                        'Healthcare Provider', 'Healthcare Provider') || ']'),
        jmember('name', jstr(pr.name)),
        '}'
    ) AS resource
FROM f.practice pr

UNION ALL

SELECT
    'Organization',
    fid('Department', d.department_id),
    NULL::VARCHAR,
    date_trunc('second', d.updated_at),
    d.deleted_at,
    concat(
        '{"resourceType":"Organization","id":"', fid('Department', d.department_id), '"',
        jmember('meta', jmeta(date_trunc('second', d.updated_at), 'us-core-organization')),
        ',"identifier":[{"system":"urn:athenahealth:athenanet:department:{pid}","value":"', d.department_id, '"}]',
        ',"active":true',
        jmember('type', '[' || jconcept('http://terminology.hl7.org/CodeSystem/organization-type', 'dept',
                                        'Hospital Department', d.specialty) || ']'),
        jmember('name', jstr(d.name)),
        jmember('alias', '[' || jstr(d.billing_name) || ']'),
        jmember('telecom', '[{"system":"phone","value":' || jstr(d.phone) || ',"use":"work"}]'),
        jmember('address', '[{"use":"work","line":[' || jstr(d.address) || '],"city":' || jstr(d.city)
                           || ',"state":' || jstr(d.state) || ',"postalCode":' || jstr(d.zip)
                           || ',"country":"US"}]'),
        ',"partOf":{"reference":"Organization/a-1.Practice-{pid}"}',
        '}'
    )
FROM f.departments d
