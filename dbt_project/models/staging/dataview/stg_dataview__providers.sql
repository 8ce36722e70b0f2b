-- stg_dataview__providers: athenaOne PROVIDER, typed and renamed; soft-deleted rows and other practices removed.
{% set columns = [
    ('PROVIDERID', 'bigint', 'provider_id'),
    ('PROVIDERNPINUMBER', 'varchar', 'npi'),
    ('PROVIDERFIRSTNAME', 'varchar', 'first_name'),
    ('PROVIDERLASTNAME', 'varchar', 'last_name'),
    ('PROVIDERSEX', 'varchar', 'sex'),
    ('PROVIDERTYPE', 'varchar', 'provider_type'),
    ('SPECIALTY', 'varchar', 'specialty'),
    ('TAXONOMY', 'varchar', 'taxonomy_code'),
    ('PROVIDERGROUPID', 'bigint', 'provider_group_id'),
    ('SUPERVISINGPROVIDERID', 'bigint', 'supervising_provider_id'),
    ('BILLABLEYN', 'yn', 'is_billable')
] %}

{{ dataview_staging('provider', columns) }}
