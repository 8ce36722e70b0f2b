-- stg_dataview__claim_diagnoses: athenaOne CLAIMDIAGNOSIS, typed and renamed; soft-deleted rows and other practices removed.
{% set columns = [
    ('CLAIMDIAGNOSISID', 'bigint', 'claim_diagnosis_id'),
    ('CLAIMID', 'bigint', 'claim_id'),
    ('DIAGNOSISCODE', 'varchar', 'diagnosis_code'),
    ('SEQUENCENUMBER', 'integer', 'sequence_number'),
    ('DIAGNOSISCODESETNAME', 'varchar', 'diagnosis_code_set')
] %}

{{ dataview_staging('claimdiagnosis', columns) }}
