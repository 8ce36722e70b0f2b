-- stg_dataview__vital_signs: athenaOne VITALSIGN, typed and renamed; soft-deleted rows and other practices removed.
{% set columns = [
    ('ENCOUNTERDATAID', 'bigint', 'encounter_data_id'),
    ('CLINICALENCOUNTERID', 'bigint', 'clinical_encounter_id'),
    ('KEY', 'varchar', 'vital_key'),
    ('VALUE', 'varchar', 'value_text'),
    ('VALUE', 'numeric_text', 'value_numeric'),
    ('DISPLAYVALUE', 'varchar', 'display_value'),
    ('DISPLAYUNIT', 'varchar', 'display_unit'),
    ('DBUNIT', 'varchar', 'db_unit'),
    ('OBSERVATIONDATETIME', 'timestamp', 'observed_at')
] %}

{{ dataview_staging('vitalsign', columns) }}
