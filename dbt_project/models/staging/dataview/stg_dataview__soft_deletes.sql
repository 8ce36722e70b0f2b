-- stg_dataview__soft_deletes: per Data View table, the rows staging leaves out because upstream
-- soft-deleted them (DELETEDDATETIME set). athenaOne keeps deleted rows in the share; a sudden jump
-- here (a bulk delete, a merge) explains why a staged count dropped. Same practice filter as staging.
{%- set staging_models = {
    'patient': 'patients', 'provider': 'providers', 'department': 'departments',
    'insurancepackage': 'insurance_packages', 'patientinsurance': 'patient_insurances',
    'appointmenttype': 'appointment_types', 'appointment': 'appointments',
    'clinicalencounter': 'clinical_encounters', 'clinicalencounterdiagnosis': 'clinical_encounter_diagnoses',
    'patientproblem': 'patient_problems', 'document': 'documents', 'clinicalresult': 'clinical_results',
    'clinicalresultobservation': 'clinical_result_observations', 'vitalsign': 'vital_signs',
    'claim': 'claims', 'claimdiagnosis': 'claim_diagnoses', 'transaction': 'transactions',
    'kickreason': 'kick_reasons', 'claimnote': 'claim_notes', 'erarecord': 'era_records', 'erakick': 'era_kicks',
} %}

{% for table_name in dataview_tables() %}
    {%- set relation = source('raw_dataview', table_name) %}
    {%- if relation_exists(relation) %}
        {#- a share without the soft-delete column has no soft deletes -#}
        {%- set deleted = '"DELETEDDATETIME" is not null' if not execute or 'DELETEDDATETIME' in
            adapter.get_columns_in_relation(relation) | map(attribute='name') | map('upper') | list else 'false' %}
select
    '{{ table_name }}' as table_name,
    'stg_dataview__{{ staging_models[table_name] }}' as staging_model,
    true as is_present,
    count(*) as total_rows,
    count(*) filter (where {{ deleted }}) as soft_deleted_rows,
    count(*) filter (where not ({{ deleted }})) as live_rows
from {{ relation }}
where true{{ dataview_context_filter() }}
    {%- else %}
select
    '{{ table_name }}' as table_name,
    'stg_dataview__{{ staging_models[table_name] }}' as staging_model,
    false as is_present,
    cast(0 as bigint) as total_rows,
    cast(0 as bigint) as soft_deleted_rows,
    cast(0 as bigint) as live_rows
    {%- endif %}
    {%- if not loop.last %}
union all
    {%- endif %}
{% endfor %}
