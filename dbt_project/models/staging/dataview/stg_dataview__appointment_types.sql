-- stg_dataview__appointment_types: athenaOne APPOINTMENTTYPE, typed and renamed; soft-deleted rows and other practices removed.
{% set columns = [
    ('APPOINTMENTTYPEID', 'bigint', 'appointment_type_id'),
    ('APPOINTMENTTYPENAME', 'varchar', 'appointment_type_name')
] %}

{{ dataview_staging('appointmenttype', columns) }}
