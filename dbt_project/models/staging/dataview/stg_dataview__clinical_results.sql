-- stg_dataview__clinical_results: athenaOne CLINICALRESULT, typed and renamed; soft-deleted rows and other practices removed.
{% set columns = [
    ('CLINICALRESULTID', 'bigint', 'clinical_result_id'),
    ('DOCUMENTID', 'bigint', 'document_id'),
    ('CLINICALORDERTYPEGROUP', 'varchar', 'clinical_order_type_group'),
    ('RESULTSREPORTEDDATETIME', 'timestamp', 'results_reported_at'),
    ('OBSERVATIONDATETIME', 'timestamp', 'observed_at')
] %}

{{ dataview_staging('clinicalresult', columns) }}
