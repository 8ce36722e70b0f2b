-- stg_dataview__patients: athenaOne PATIENT, typed and renamed; soft-deleted rows and other practices removed.
{% set columns = [
    ('PATIENTID', 'bigint', 'patient_id'),
    ('ENTERPRISEID', 'bigint', 'enterprise_id'),
    ('FIRSTNAME', 'varchar', 'first_name'),
    ('LASTNAME', 'varchar', 'last_name'),
    ('SEX', 'varchar', 'sex'),
    ('DOB', 'date', 'date_of_birth'),
    ('ADDRESS', 'varchar', 'address'),
    ('CITY', 'varchar', 'city'),
    ('STATE', 'varchar', 'state'),
    ('ZIP', 'varchar', 'zip'),
    ('PATIENTHOMEPHONE', 'varchar', 'home_phone'),
    ('RACE', 'varchar', 'race'),
    ('CDCRACECODE', 'varchar', 'cdc_race_code'),
    ('ETHNICITY', 'varchar', 'ethnicity'),
    ('CDCETHNICITYCODE', 'varchar', 'cdc_ethnicity_code'),
    ('LANGUAGE', 'varchar', 'language'),
    ('PATIENTSTATUS', 'varchar', 'patient_status'),
    ('DECEASEDDATE', 'date', 'deceased_date'),
    ('REGISTRATIONDATE', 'date', 'registration_date'),
    ('REGISTRATIONDEPARTMENTID', 'bigint', 'registration_department_id'),
    ('CURRENTDEPARTMENTID', 'bigint', 'current_department_id'),
    ('PRIMARYPROVIDERID', 'bigint', 'primary_provider_id'),
    ('PROVIDERGROUPID', 'bigint', 'provider_group_id'),
    ('NEWPATIENTID', 'bigint', 'new_patient_id'),
    ('TESTPATIENTYN', 'yn', 'is_test_patient')
] %}

{{ dataview_staging('patient', columns) }}
