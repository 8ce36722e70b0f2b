-- stg_dataview__clinical_result_observations: athenaOne CLINICALRESULTOBSERVATION, typed and renamed; soft-deleted rows and other practices removed.
{% set columns = [
    ('CLINICALOBSERVATIONID', 'bigint', 'clinical_observation_id'),
    ('CLINICALRESULTID', 'bigint', 'clinical_result_id'),
    ('LOINCID', 'varchar', 'loinc_id'),
    ('OBSERVATIONIDENTIFIER', 'varchar', 'observation_identifier'),
    ('OBSERVATIONIDENTIFIERTEXT', 'varchar', 'observation_identifier_text'),
    ('OBSERVATIONIDENTIFIERLOINC', 'varchar', 'loinc_code'),
    ('RESULT', 'varchar', 'result_text'),
    ('RESULT', 'numeric_text', 'result_numeric'),
    ('OBSERVATIONUNITS', 'varchar', 'units'),
    ('REFERENCERANGE', 'varchar', 'reference_range'),
    ('OBSERVATIONABNORMALFLAGID', 'varchar', 'abnormal_flag'),
    ('RESULTSTATUS', 'varchar', 'result_status'),
    ('OBSERVATIONTIMESTAMPDATETIME', 'timestamp', 'observed_at'),
    ('LASTMODIFIEDDATETIME', 'timestamp', 'last_modified_at')
] %}

{{ dataview_staging('clinicalresultobservation', columns) }}
