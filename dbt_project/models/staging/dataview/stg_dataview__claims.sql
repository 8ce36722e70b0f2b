-- stg_dataview__claims: athenaOne CLAIM, typed and renamed; soft-deleted rows and other practices removed.
{% set columns = [
    ('CLAIMID', 'bigint', 'claim_id'),
    ('PATIENTID', 'bigint', 'patient_id'),
    ('CLAIMAPPOINTMENTID', 'bigint', 'appointment_id'),
    ('CLAIMPRIMARYPATIENTINSID', 'bigint', 'primary_patient_insurance_id'),
    ('CLAIMSECONDARYPATIENTINSID', 'bigint', 'secondary_patient_insurance_id'),
    ('RENDERINGPROVIDERID', 'bigint', 'rendering_provider_id'),
    ('SERVICEDEPARTMENTID', 'bigint', 'service_department_id'),
    ('PRIMARYCLAIMSTATUS', 'varchar', 'primary_claim_status'),
    ('SECONDARYCLAIMSTATUS', 'varchar', 'secondary_claim_status'),
    ('PATIENTCLAIMSTATUS', 'varchar', 'patient_claim_status'),
    ('PRIMARYOUTSTANDING', 'decimal(18,2)', 'primary_outstanding'),
    ('SECONDARYOUTSTANDING', 'decimal(18,2)', 'secondary_outstanding'),
    ('PATIENTOUTSTANDING', 'decimal(18,2)', 'patient_outstanding'),
    ('CLAIMSERVICEDATE', 'date', 'service_date'),
    ('CLAIMCREATEDDATETIME', 'timestamp', 'claim_created_at'),
    ('LASTBILLEDDATE1', 'date', 'last_billed_date_primary'),
    ('LASTBILLEDDATE2', 'date', 'last_billed_date_secondary'),
    ('DIAGNOSIS1', 'varchar', 'diagnosis_code_1'),
    ('DIAGNOSIS2', 'varchar', 'diagnosis_code_2'),
    ('DIAGNOSIS3', 'varchar', 'diagnosis_code_3'),
    ('DIAGNOSIS4', 'varchar', 'diagnosis_code_4'),
    ('DIAGNOSIS5', 'varchar', 'diagnosis_code_5'),
    ('DIAGNOSIS6', 'varchar', 'diagnosis_code_6'),
    ('DIAGNOSIS7', 'varchar', 'diagnosis_code_7'),
    ('DIAGNOSIS8', 'varchar', 'diagnosis_code_8'),
    ('LASTMODIFIED', 'timestamp', 'last_modified_at')
] %}

{{ dataview_staging('claim', columns) }}
