-- stg_dataview__era_records: athenaOne ERARECORD, typed and renamed; soft-deleted rows and other practices removed.
{% set columns = [
    ('ERARECORDID', 'bigint', 'era_record_id'),
    ('CLAIMID', 'bigint', 'claim_id'),
    ('PATIENTID', 'bigint', 'patient_id'),
    ('INSURANCEPACKAGEID', 'bigint', 'insurance_package_id'),
    ('TRANSFERTYPE', 'varchar', 'transfer_type'),
    ('REMITDATE', 'date', 'remit_date'),
    ('REMITSEQUENCE', 'integer', 'remit_sequence'),
    ('BILLEDAMOUNT', 'decimal(18,2)', 'billed_amount'),
    ('ALLOWEDAMOUNT', 'decimal(18,2)', 'allowed_amount'),
    ('PAIDAMOUNT', 'decimal(18,2)', 'paid_amount'),
    ('PATIENTRESPONSIBILITYAMOUNT', 'decimal(18,2)', 'patient_responsibility_amount'),
    ('DENIALYN', 'yn', 'is_denial')
] %}

{{ dataview_staging('erarecord', columns) }}
