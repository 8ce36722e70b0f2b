-- stg_dataview__transactions: athenaOne TRANSACTION, typed and renamed; soft-deleted rows and other practices removed.
{% set columns = [
    ('TRANSACTIONID', 'bigint', 'transaction_id'),
    ('TRANSACTIONTYPE', 'varchar', 'transaction_type'),
    ('TRANSACTIONREASON', 'varchar', 'transaction_reason'),
    ('TRANSACTIONTRANSFERTYPE', 'varchar', 'transfer_type'),
    ('AMOUNT', 'decimal(18,2)', 'amount'),
    ('CHARGEID', 'bigint', 'charge_id'),
    ('PARENTCHARGEID', 'bigint', 'parent_charge_id'),
    ('CLAIMID', 'bigint', 'claim_id'),
    ('PATIENTID', 'bigint', 'patient_id'),
    ('INSURANCEPACKAGEID', 'bigint', 'insurance_package_id'),
    ('TRANSACTIONPATIENTINSID', 'bigint', 'patient_insurance_id'),
    ('PAYMENTBATCHID', 'bigint', 'payment_batch_id'),
    ('ERARECORDID', 'bigint', 'era_record_id'),
    ('POSTDATE', 'date', 'post_date'),
    ('VOIDEDDATE', 'date', 'voided_date'),
    ('REVERSALFLAG', 'yn', 'is_reversal'),
    ('PROCEDURECODE', 'varchar', 'procedure_code'),
    ('UNITS', 'integer', 'units'),
    ('CHARGEFROMDATE', 'date', 'charge_from_date'),
    ('CHARGETODATE', 'date', 'charge_to_date'),
    ('FIRSTBILLEDDATETIME', 'timestamp', 'first_billed_at'),
    ('LASTBILLEDDATETIME', 'timestamp', 'last_billed_at'),
    ('TRANSACTIONCREATEDDATETIME', 'timestamp', 'transaction_created_at')
] %}

{{ dataview_staging('transaction', columns) }}
