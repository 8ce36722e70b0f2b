-- stg_dataview__clinical_encounter_diagnoses: athenaOne CLINICALENCOUNTERDIAGNOSIS, typed and renamed; soft-deleted rows and other practices removed.
{% set columns = [
    ('CLINICALENCOUNTERDXID', 'bigint', 'clinical_encounter_dx_id'),
    ('CLINICALENCOUNTERID', 'bigint', 'clinical_encounter_id'),
    ('DIAGNOSISCODE', 'varchar', 'diagnosis_code'),
    ('DIAGNOSISCODEDESCRIPTION', 'varchar', 'diagnosis_description'),
    ('SNOMEDCODE', 'varchar', 'snomed_code'),
    ('STATUS', 'varchar', 'status'),
    ('ORDERING', 'integer', 'ordering')
] %}

{{ dataview_staging('clinicalencounterdiagnosis', columns) }}
