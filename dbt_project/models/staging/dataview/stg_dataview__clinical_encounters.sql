-- stg_dataview__clinical_encounters: athenaOne CLINICALENCOUNTER, typed and renamed; soft-deleted rows and other practices removed.
{% set columns = [
    ('CLINICALENCOUNTERID', 'bigint', 'clinical_encounter_id'),
    ('PATIENTID', 'bigint', 'patient_id'),
    ('CHARTID', 'bigint', 'chart_id'),
    ('APPOINTMENTID', 'bigint', 'appointment_id'),
    ('DEPARTMENTID', 'bigint', 'department_id'),
    ('CLAIMID', 'bigint', 'claim_id'),
    ('PROVIDERID', 'bigint', 'provider_id'),
    ('ENCOUNTERDATE', 'date', 'encounter_date'),
    ('ENCOUNTERDATETIMEUTC', 'timestamp', 'encounter_at'),
    ('ENCOUNTERSTATUS', 'varchar', 'encounter_status'),
    ('CLINICALENCOUNTERTYPE', 'varchar', 'clinical_encounter_type'),
    ('CLOSEDDATETIME', 'timestamp', 'closed_at'),
    ('LASTMODIFIED', 'timestamp', 'last_modified_at')
] %}

{{ dataview_staging('clinicalencounter', columns) }}
