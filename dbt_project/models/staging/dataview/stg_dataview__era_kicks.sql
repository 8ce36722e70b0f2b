-- stg_dataview__era_kicks: athenaOne ERAKICK, typed and renamed; soft-deleted rows and other practices removed.
{% set columns = [
    ('ERAKICKID', 'bigint', 'era_kick_id'),
    ('ERARECORDID', 'bigint', 'era_record_id'),
    ('CLAIMID', 'bigint', 'claim_id'),
    ('GROUPCODE', 'varchar', 'group_code'),
    ('ADJUSTMENTREASONCODE', 'varchar', 'adjustment_reason_code'),
    ('KICKCODE', 'varchar', 'kick_code'),
    ('KICKREASONID', 'bigint', 'kick_reason_id'),
    ('KICKEDAMOUNT', 'decimal(18,2)', 'kicked_amount')
] %}

{{ dataview_staging('erakick', columns) }}
