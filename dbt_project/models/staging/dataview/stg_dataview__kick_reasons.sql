-- stg_dataview__kick_reasons: athenaOne KICKREASON, typed and renamed; soft-deleted rows and other practices removed.
{% set columns = [
    ('KICKREASONID', 'bigint', 'kick_reason_id'),
    ('KICKCODE', 'varchar', 'kick_code'),
    ('KICKREASONNAME', 'varchar', 'kick_reason_name'),
    ('KICKREASONCATEGORYID', 'bigint', 'kick_reason_category_id'),
    ('KICKREASONCATEGORY', 'varchar', 'kick_reason_category'),
    ('NEXTCLAIMSTATUS', 'varchar', 'next_claim_status')
] %}

{{ dataview_staging('kickreason', columns) }}
