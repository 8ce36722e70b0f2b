-- stg_dataview__patient_insurances: athenaOne PATIENTINSURANCE, typed and renamed; soft-deleted rows and other practices removed.
{% set columns = [
    ('PATIENTINSURANCEID', 'bigint', 'patient_insurance_id'),
    ('PATIENTID', 'bigint', 'patient_id'),
    ('INSURANCEPACKAGEID', 'bigint', 'insurance_package_id'),
    ('SEQUENCENUMBER', 'integer', 'sequence_number'),
    ('INSURANCEIDNUMBER', 'varchar', 'insurance_id_number'),
    ('ISSUEDATE', 'date', 'issue_date'),
    ('EXPIRATIONDATE', 'date', 'expiration_date'),
    ('CANCELLATIONDATE', 'date', 'cancellation_date')
] %}

{{ dataview_staging('patientinsurance', columns) }}
