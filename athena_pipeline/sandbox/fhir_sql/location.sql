-- Location: one per department, same logical id as the department Organization that manages it.
SELECT
    'Location' AS resource_type,
    fid('Department', d.department_id) AS id,
    NULL::VARCHAR AS patient_id,
    date_trunc('second', d.updated_at) AS last_updated,
    d.deleted_at,
    concat(
        '{"resourceType":"Location","id":"', fid('Department', d.department_id), '"',
        jmember('meta', jmeta(date_trunc('second', d.updated_at), 'us-core-location')),
        ',"identifier":[{"system":"urn:athenahealth:athenanet:department:{pid}","value":"', d.department_id, '"}]',
        ',"status":"active"',
        jmember('name', jstr(d.name)),
        ',"mode":"instance"',
        jmember('type', '[' || jconcept('https://www.cms.gov/Medicare/Coding/place-of-service-codes/Place_of_Service_Code_Set',
                                        d.place_of_service_code, NULL, d.specialty) || ']'),
        jmember('telecom', '[{"system":"phone","value":' || jstr(d.phone) || ',"use":"work"}]'),
        jmember('address', '{"use":"work","line":[' || jstr(d.address) || '],"city":' || jstr(d.city)
                           || ',"state":' || jstr(d.state) || ',"postalCode":' || jstr(d.zip)
                           || ',"country":"US"}'),
        jmember('managingOrganization', jref('Organization', fid('Department', d.department_id))),
        '}'
    ) AS resource
FROM f.departments d
