-- stg_dataview__patient_problems: athenaOne PATIENTPROBLEM, typed and renamed; soft-deleted rows and other practices removed.
{% set columns = [
    ('PATIENTPROBLEMID', 'bigint', 'patient_problem_id'),
    ('PATIENTID', 'bigint', 'patient_id'),
    ('CHARTID', 'bigint', 'chart_id'),
    ('DIAGNOSISCODE', 'varchar', 'diagnosis_code'),
    ('DIAGNOSISCODEDESCRIPTION', 'varchar', 'diagnosis_description'),
    ('SNOMEDCODE', 'varchar', 'snomed_code'),
    ('STATUS', 'varchar', 'status'),
    ('ONSETDATE', 'date', 'onset_date'),
    ('DEACTIVATEDDATETIME', 'timestamp', 'deactivated_at'),
    ('LASTMODIFIEDDATETIME', 'timestamp', 'last_modified_at')
] %}

{{ dataview_staging('patientproblem', columns) }}
