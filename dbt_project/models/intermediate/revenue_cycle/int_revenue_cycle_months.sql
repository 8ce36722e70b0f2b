-- int_revenue_cycle_months: the reporting months of each practice, from the month of its first ledger
-- posting or remit through the month of as_of_date(), each with the date its figures are taken on
-- (the last day of the month, or as_of_date() for the current, partial month). Marts use it as a
-- dense spine so a month with no activity still shows zeros, and trailing windows (3-month averages,
-- 90-day charges) count empty months.
with activity as (
    select context_id, post_date as activity_date from {{ ref('stg_dataview__transactions') }}
    union all
    select context_id, remit_date from {{ ref('stg_dataview__era_records') }}
),

bounds as (
    select context_id, cast(date_trunc('month', min(activity_date)) as date) as first_month
    from activity
    where activity_date <= {{ as_of_date() }}
    group by 1
),

months as (
    select
        context_id,
        cast(unnest(generate_series(first_month, cast(date_trunc('month', {{ as_of_date() }}) as date), interval 1 month)) as date)
            as month
    from bounds
)

select
    context_id,
    month,
    least(last_day(month), {{ as_of_date() }}) as month_end_date,
    last_day(month) > {{ as_of_date() }} as is_partial_month,
    {{ as_of_date() }} as as_of_date
from months
