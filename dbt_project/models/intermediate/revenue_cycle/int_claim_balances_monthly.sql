-- int_claim_balances_monthly: the open balance of each claim and responsible party (primary,
-- secondary, patient) at every reporting month end (int_revenue_cycle_months.month_end_date: the last
-- day of the month, or as_of_date() in the current month), rebuilt from the TRANSACTION ledger like
-- int_claim_balances. Only non-zero balances are kept (negative = credit balance). Age = days from the
-- date of service to the month end, never re-aged on transfer to the secondary payer or the patient.
-- How: the running balance of each claim and party is constant between two posting dates, so each
-- posting opens a period [post_date, next post_date) and a month end falls in exactly one of them.
with daily as (
    select context_id, claim_id, lower(transfer_type) as responsible_party, post_date, sum(amount) as amount
    from {{ ref('stg_dataview__transactions') }}
    where post_date <= {{ as_of_date() }}
    group by 1, 2, 3, 4
),

periods as (
    select
        context_id,
        claim_id,
        responsible_party,
        post_date as valid_from,
        lead(post_date) over w as valid_to,
        sum(amount) over (w rows between unbounded preceding and current row) as open_balance
    from daily
    window w as (partition by context_id, claim_id, responsible_party order by post_date)
)

select
    m.context_id,
    m.month,
    m.month_end_date,
    p.claim_id,
    p.responsible_party,
    c.rendering_provider_id as provider_id,
    c.service_department_id as department_id,
    c.service_date,
    greatest(m.month_end_date - c.service_date, 0) as days_since_service,
    -- bucket of a positive balance (aging_buckets seed); credits are not aged
    case when p.open_balance > 0 then a.bucket_label end as aging_bucket,
    coalesce(p.open_balance > 0 and a.is_over_90, false) as is_over_90,
    p.open_balance
from periods p
join {{ ref('int_revenue_cycle_months') }} m
    on m.context_id = p.context_id
   and m.month_end_date >= p.valid_from
   and (p.valid_to is null or m.month_end_date < p.valid_to)
left join {{ ref('stg_dataview__claims') }} c
    on c.context_id = p.context_id and c.claim_id = p.claim_id
left join {{ ref('aging_buckets') }} a
    on greatest(m.month_end_date - c.service_date, 0) >= a.min_days
   and (a.max_days is null or greatest(m.month_end_date - c.service_date, 0) <= a.max_days)
where p.open_balance <> 0
