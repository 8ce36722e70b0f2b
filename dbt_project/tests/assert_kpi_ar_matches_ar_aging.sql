-- The scorecard's A/R on the as-of date is the A/R aging's: for the current month, the practice row of
-- revenue_cycle_kpis carries the same open A/R, A/R over 90 days and credit balances as ar_aging.
with kpi as (
    select context_id, ar_end_of_month, ar_over_90_end_of_month, credit_balance_end_of_month
    from {{ ref('revenue_cycle_kpis') }}
    where grain_level = 'practice' and month_end_date = {{ as_of_date() }}
),
aging as (
    select context_id,
           coalesce(sum(open_balance) filter (where balance_type = 'open_balance'), 0) as ar,
           coalesce(sum(open_balance) filter (where balance_type = 'open_balance' and is_over_90), 0) as ar_over_90,
           coalesce(sum(open_balance) filter (where balance_type = 'credit_balance'), 0) as credit
    from {{ ref('ar_aging') }}
    group by 1
)
select *
from kpi k
full outer join aging a using (context_id)
where coalesce(k.ar_end_of_month, 0) <> coalesce(a.ar, 0)
   or coalesce(k.ar_over_90_end_of_month, 0) <> coalesce(a.ar_over_90, 0)
   or coalesce(k.credit_balance_end_of_month, 0) <> coalesce(a.credit, 0)
