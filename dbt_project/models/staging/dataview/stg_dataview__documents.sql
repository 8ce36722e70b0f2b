-- stg_dataview__documents: athenaOne DOCUMENT, typed and renamed; soft-deleted rows and other practices removed.
{% set columns = [
    ('DOCUMENTID', 'bigint', 'document_id'),
    ('PATIENTID', 'bigint', 'patient_id'),
    ('CHARTID', 'bigint', 'chart_id'),
    ('DEPARTMENTID', 'bigint', 'department_id'),
    ('CLINICALENCOUNTERID', 'bigint', 'clinical_encounter_id'),
    ('DOCUMENTCLASS', 'varchar', 'document_class'),
    ('CLINICALORDERTYPEGROUP', 'varchar', 'clinical_order_type_group'),
    ('DOCUMENTSUBJECT', 'varchar', 'document_subject'),
    ('STATUS', 'varchar', 'status'),
    ('OBSERVATIONDATETIME', 'timestamp', 'observed_at')
] %}

{{ dataview_staging('document', columns) }}
