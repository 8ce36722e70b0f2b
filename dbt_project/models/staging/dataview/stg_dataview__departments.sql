-- stg_dataview__departments: athenaOne DEPARTMENT, typed and renamed; soft-deleted rows and other practices removed.
{% set columns = [
    ('DEPARTMENTID', 'bigint', 'department_id'),
    ('DEPARTMENTNAME', 'varchar', 'department_name'),
    ('BILLINGNAME', 'varchar', 'billing_name'),
    ('DEPARTMENTADDRESS', 'varchar', 'address'),
    ('DEPARTMENTCITY', 'varchar', 'city'),
    ('DEPARTMENTSTATE', 'varchar', 'state'),
    ('DEPARTMENTZIP', 'varchar', 'zip'),
    ('DEPARTMENTPHONE', 'varchar', 'phone'),
    ('DEPARTMENTSPECIALTY', 'varchar', 'specialty'),
    ('PLACEOFSERVICECODE', 'varchar', 'place_of_service_code'),
    ('PROVIDERGROUPID', 'bigint', 'provider_group_id'),
    ('CHARTSHARINGGROUPID', 'bigint', 'chart_sharing_group_id')
] %}

{{ dataview_staging('department', columns) }}
