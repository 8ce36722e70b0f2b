-- revenue_cycle_kpis: the monthly revenue-cycle scorecard (metrics.md §1.1) per rendering provider and
-- service department, plus practice-level rows, as of as_of_date(). Money flows are dated by posting
-- date; A/R is the ledger balance at the month end (as_of_date() in the current month); claim counts
-- are dated by what happened in the month (submitted, first remit). Formulas and deviations: see YAML.
with months as (
    select context_id, month, month_end_date, is_partial_month,
           row_number() over (partition by context_id order by month) as month_number
    from {{ ref('int_revenue_cycle_months') }}
),

ledger as (
    select * from {{ ref('int_transactions') }}
    where post_date <= {{ as_of_date() }}
),

claims as (
    select * from {{ ref('int_claims') }}
),

-- every provider x department the practice has billed under
units as (
    select distinct context_id, provider_id, department_id from claims
),

money as (
    select
        context_id, post_month as month, provider_id, department_id,
        sum(reported_amount) filter (where transaction_class = 'charge') as gross_charges,
        sum(reported_amount) filter (where transaction_class = 'payment') as payments,
        sum(reported_amount) filter (where transaction_class = 'refund') as refunds,
        sum(reported_amount) filter (where transaction_class = 'contractual_adjustment') as contractual_adjustments,
        sum(reported_amount) filter (where transaction_class = 'other_adjustment') as other_adjustments,
        sum(reported_amount) filter (where is_denial_write_off) as denial_write_offs
    from ledger
    group by 1, 2, 3, 4
),

-- gross charges posted in the 90 days ending on each month end (the days-in-A/R denominator)
daily_charges as (
    select context_id, provider_id, department_id, post_date, sum(reported_amount) as charges
    from ledger
    where transaction_class = 'charge'
    group by 1, 2, 3, 4
),

charges_90d as (
    select d.context_id, m.month, d.provider_id, d.department_id, sum(d.charges) as charges_90d
    from daily_charges d
    join months m
        on m.context_id = d.context_id
       and d.post_date > m.month_end_date - 90
       and d.post_date <= m.month_end_date
    group by 1, 2, 3, 4
),

receivables as (
    select
        context_id, month, provider_id, department_id,
        sum(open_balance) filter (where open_balance > 0) as ar_end_of_month,
        sum(open_balance) filter (where open_balance > 0 and is_over_90) as ar_over_90_end_of_month,
        sum(open_balance) filter (where open_balance < 0) as credit_balance_end_of_month
    from {{ ref('int_claim_balances_monthly') }}
    group by 1, 2, 3, 4
),

submissions as (
    select
        context_id, submission_month as month, provider_id, department_id,
        count(*) as claims_submitted,
        count(*) filter (where is_clean_claim) as clean_claims
    from claims
    where not is_self_pay and first_submitted_date <= {{ as_of_date() }}
    group by 1, 2, 3, 4
),

adjudications as (
    select
        context_id, cast(date_trunc('month', first_remit_date) as date) as month, provider_id, department_id,
        count(*) as claims_first_remitted,
        count(*) filter (where is_initial_denial) as claims_denied_initial,
        count(*) filter (where not is_initial_denial) as first_pass_resolved
    from claims
    where first_remit_date <= {{ as_of_date() }}
    group by 1, 2, 3, 4
),

components as (
    select
        m.context_id,
        m.month,
        m.month_end_date,
        m.is_partial_month,
        m.month_number,
        u.provider_id,
        u.department_id,
        coalesce(mo.gross_charges, 0) as gross_charges,
        coalesce(mo.payments, 0) as payments,
        coalesce(mo.refunds, 0) as refunds,
        coalesce(mo.contractual_adjustments, 0) as contractual_adjustments,
        coalesce(mo.other_adjustments, 0) as other_adjustments,
        coalesce(mo.denial_write_offs, 0) as denial_write_offs,
        coalesce(r.ar_end_of_month, 0) as ar_end_of_month,
        coalesce(r.ar_over_90_end_of_month, 0) as ar_over_90_end_of_month,
        coalesce(r.credit_balance_end_of_month, 0) as credit_balance_end_of_month,
        coalesce(c.charges_90d, 0) as charges_90d,
        coalesce(s.claims_submitted, 0) as claims_submitted,
        coalesce(s.clean_claims, 0) as clean_claims,
        coalesce(a.claims_first_remitted, 0) as claims_first_remitted,
        coalesce(a.claims_denied_initial, 0) as claims_denied_initial,
        coalesce(a.first_pass_resolved, 0) as first_pass_resolved
    from months m
    join units u on u.context_id = m.context_id
    left join money mo
        on mo.context_id = m.context_id and mo.month = m.month
       and mo.provider_id is not distinct from u.provider_id and mo.department_id is not distinct from u.department_id
    left join receivables r
        on r.context_id = m.context_id and r.month = m.month
       and r.provider_id is not distinct from u.provider_id and r.department_id is not distinct from u.department_id
    left join charges_90d c
        on c.context_id = m.context_id and c.month = m.month
       and c.provider_id is not distinct from u.provider_id and c.department_id is not distinct from u.department_id
    left join submissions s
        on s.context_id = m.context_id and s.month = m.month
       and s.provider_id is not distinct from u.provider_id and s.department_id is not distinct from u.department_id
    left join adjudications a
        on a.context_id = m.context_id and a.month = m.month
       and a.provider_id is not distinct from u.provider_id and a.department_id is not distinct from u.department_id
),

levels as (
    select 'provider_department' as grain_level, * from components
    union all
    select
        'practice' as grain_level,
        context_id, month, month_end_date, is_partial_month, month_number,
        cast(null as bigint) as provider_id, cast(null as bigint) as department_id,
        sum(gross_charges), sum(payments), sum(refunds), sum(contractual_adjustments), sum(other_adjustments),
        sum(denial_write_offs), sum(ar_end_of_month), sum(ar_over_90_end_of_month), sum(credit_balance_end_of_month),
        sum(charges_90d), sum(claims_submitted), sum(clean_claims), sum(claims_first_remitted),
        sum(claims_denied_initial), sum(first_pass_resolved)
    from components
    group by context_id, month, month_end_date, is_partial_month, month_number
),

with_baseline as (
    select
        *,
        -- HFMA initial denial rate denominator: average monthly claims submitted in the 3 months before
        case when month_number > 3 then
            sum(claims_submitted) over (w rows between 3 preceding and 1 preceding) / 3.0
        end as claims_submitted_prior_3m_avg,
        -- collection and write-off rates use the 12 months ending with this one (metrics.md: 12 months
        -- recommended): a single month's cash and contractuals belong to earlier months' charges
        count(*) over (w rows between 11 preceding and current row) as rate_window_months,
        sum(payments - refunds) over (w rows between 11 preceding and current row) as net_payments_12m,
        sum(gross_charges) over (w rows between 11 preceding and current row) as gross_charges_12m,
        sum(gross_charges - contractual_adjustments) over (w rows between 11 preceding and current row)
            as adjusted_charges_12m,
        sum(denial_write_offs) over (w rows between 11 preceding and current row) as denial_write_offs_12m
    from levels
    window w as (partition by context_id, grain_level, provider_id, department_id order by month)
)

select
    {{ as_of_date() }} as as_of_date,
    b.context_id,
    b.month,
    b.month_end_date,
    b.is_partial_month,
    b.grain_level,
    b.provider_id,
    case when b.provider_id is not null
         then coalesce(nullif(trim(concat_ws(' ', pr.first_name, pr.last_name)), ''), 'Provider ' || b.provider_id) end as provider_name,
    b.department_id,
    case when b.department_id is not null
         then coalesce(d.department_name, 'Department ' || b.department_id) end as department_name,
    b.gross_charges,
    b.payments,
    b.refunds,
    b.contractual_adjustments,
    b.other_adjustments,
    b.denial_write_offs,
    b.rate_window_months,
    cast(b.net_payments_12m as double) / nullif(b.adjusted_charges_12m, 0) as net_collection_rate,
    cast(b.net_payments_12m as double) / nullif(b.gross_charges_12m, 0) as gross_collection_rate,
    b.ar_end_of_month,
    b.ar_over_90_end_of_month,
    b.credit_balance_end_of_month,
    b.charges_90d,
    cast(b.charges_90d as double) / 90 as avg_daily_charges_90d,
    cast(b.ar_end_of_month as double) / nullif(cast(b.charges_90d as double) / 90, 0) as days_in_ar,
    cast(b.ar_over_90_end_of_month as double) / nullif(b.ar_end_of_month, 0) as ar_over_90_pct,
    b.claims_submitted,
    b.clean_claims,
    cast(b.clean_claims as double) / nullif(b.claims_submitted, 0) as clean_claim_rate,
    cast(b.claims_submitted_prior_3m_avg as double) as claims_submitted_prior_3m_avg,
    b.claims_first_remitted,
    b.claims_denied_initial,
    cast(b.claims_denied_initial as double) / nullif(b.claims_submitted_prior_3m_avg, 0) as initial_denial_rate,
    b.first_pass_resolved,
    cast(b.first_pass_resolved as double) / nullif(b.claims_first_remitted, 0) as first_pass_resolution_rate,
    cast(b.denial_write_offs_12m as double) / nullif(b.adjusted_charges_12m, 0) as denial_write_off_pct
from with_baseline b
left join {{ ref('stg_dataview__providers') }} pr
    on pr.context_id = b.context_id and pr.provider_id = b.provider_id
left join {{ ref('stg_dataview__departments') }} d
    on d.context_id = b.context_id and d.department_id = b.department_id
