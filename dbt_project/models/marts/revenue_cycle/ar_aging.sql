-- ar_aging: accounts receivable on as_of_date() by payer, responsible party and aging bucket (days
-- since date of service, buckets from the aging_buckets seed). Positive balances only go into the
-- buckets; credit balances (negative, e.g. patient overpayments) are separate rows with
-- balance_type = 'credit_balance' and no bucket, so they are never netted into A/R.
with balances as (
    select * from {{ ref('int_claim_balances') }} where open_balance <> 0
),

debits as (
    select
        b.as_of_date,
        b.context_id,
        b.insurance_package_id,
        b.payer_name,
        b.responsible_party,
        'open_balance' as balance_type,
        a.bucket_label as aging_bucket,
        a.bucket_order,
        a.is_over_90,
        b.open_balance,
        b.claim_id
    from balances b
    join {{ ref('aging_buckets') }} a
        on b.days_since_service >= a.min_days
       and (a.max_days is null or b.days_since_service <= a.max_days)
    where b.open_balance > 0
),

credits as (
    select
        as_of_date,
        context_id,
        insurance_package_id,
        payer_name,
        responsible_party,
        'credit_balance' as balance_type,
        cast(null as varchar) as aging_bucket,
        cast(null as integer) as bucket_order,
        cast(null as boolean) as is_over_90,
        open_balance,
        claim_id
    from balances
    where open_balance < 0
)

select
    as_of_date,
    context_id,
    insurance_package_id,
    payer_name,
    responsible_party,
    balance_type,
    aging_bucket,
    bucket_order,
    is_over_90,
    sum(open_balance) as open_balance,
    count(distinct claim_id) as claim_count
from (select * from debits union all select * from credits) rows
group by all
