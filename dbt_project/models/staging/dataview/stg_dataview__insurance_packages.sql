-- stg_dataview__insurance_packages: athenaOne INSURANCEPACKAGE, typed and renamed; soft-deleted rows and other practices removed.
{% set columns = [
    ('INSURANCEPACKAGEID', 'bigint', 'insurance_package_id'),
    ('INSURANCEPACKAGENAME', 'varchar', 'insurance_package_name'),
    ('INSURANCEPACKAGETYPE', 'varchar', 'insurance_package_type'),
    ('INSURANCEPRODUCTTYPE', 'varchar', 'insurance_product_type'),
    ('INSURANCEREPORTINGCATEGORY', 'varchar', 'insurance_reporting_category'),
    ('PAYERNAME', 'varchar', 'payer_name'),
    ('PAYERID', 'varchar', 'payer_id')
] %}

{{ dataview_staging('insurancepackage', columns) }}
