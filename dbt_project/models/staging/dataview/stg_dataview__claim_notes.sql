-- stg_dataview__claim_notes: athenaOne CLAIMNOTE, typed and renamed; soft-deleted rows and other practices removed.
{% set columns = [
    ('CLAIMNOTEID', 'bigint', 'claim_note_id'),
    ('CLAIMID', 'bigint', 'claim_id'),
    ('PATIENTID', 'bigint', 'patient_id'),
    ('ACTION', 'varchar', 'action'),
    ('NOTEDATE', 'date', 'note_date'),
    ('TRANSFERTYPE', 'varchar', 'transfer_type'),
    ('KICKREASONID', 'bigint', 'kick_reason_id'),
    ('KICKCODE', 'varchar', 'kick_code'),
    ('CLAIMSTATUS', 'varchar', 'claim_status'),
    ('NOTE', 'varchar', 'note')
] %}

{{ dataview_staging('claimnote', columns) }}
