-- Coverage: one per patient insurance policy. The payer is identified (not referenced): athena
-- insurance packages are not exported as Organizations.
WITH b AS (
    SELECT
        pi.*,
        fid('PatientInsurance', pi.patient_insurance_id) AS fhir_id,
        coalesce(pi.deleted_at, p.deleted_at) AS del,
        date_trunc('second', pi.updated_at) AS lu,
        ip.name AS package_name,
        ip.package_type
    FROM f.patient_insurance pi
    LEFT JOIN f.patients p ON p.patient_id = pi.patient_id
    LEFT JOIN f.insurance_packages ip ON ip.insurance_package_id = pi.insurance_package_id
)
SELECT
    'Coverage' AS resource_type,
    fhir_id AS id,
    fid('E', patient_id) AS patient_id,
    lu AS last_updated,
    del AS deleted_at,
    concat(
        '{"resourceType":"Coverage","id":"', fhir_id, '"',
        jmember('meta', jmeta(lu, 'us-core-coverage')),
        jmember('identifier', '[{"type":'
            || jconcept('http://terminology.hl7.org/CodeSystem/v2-0203', 'MB', 'Member Number', NULL)
            || ',"system":"urn:athenahealth:athenanet:patientinsurance:{pid}","value":' || jstr(member_id) || '}]'),
        jmember('status', CASE WHEN cancellation_date IS NOT NULL THEN '"cancelled"' ELSE '"active"' END),
        -- PHDSC Source of Payment Typology, the value set US Core binds Coverage.type to.
        jmember('type', jconcept('https://nahdo.org/sopt',
            CASE package_type WHEN 'Medicare' THEN '1' WHEN 'Medicaid' THEN '2'
                              WHEN 'Commercial' THEN '5' WHEN 'Self-Pay' THEN '81' END,
            CASE package_type WHEN 'Medicare' THEN 'MEDICARE' WHEN 'Medicaid' THEN 'MEDICAID'
                              WHEN 'Commercial' THEN 'PRIVATE HEALTH INSURANCE'
                              WHEN 'Self-Pay' THEN 'Self-pay' END,
            package_type)),
        jmember('subscriberId', jstr(member_id)),
        jmember('beneficiary', jref('Patient', fid('E', patient_id))),
        jmember('relationship', jconcept('http://terminology.hl7.org/CodeSystem/subscriber-relationship',
                                         'self', 'Self', NULL)),
        jmember('period', jperiod(fhir_date(issue_date), fhir_date(coalesce(cancellation_date, expiration_date)))),
        ',"payor":[{"identifier":{"system":"urn:athenahealth:athenanet:insurancepackage:{pid}","value":"',
            insurance_package_id, '"}', jmember('display', jstr(package_name)), '}]',
        jmember('order', CAST(sequence_number AS VARCHAR)),
        '}'
    ) AS resource
FROM b
