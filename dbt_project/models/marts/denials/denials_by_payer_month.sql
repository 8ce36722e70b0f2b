-- denials_by_payer_month: claim submissions and initial denials per primary payer and month, with the
-- HFMA initial denial rate (denials received in the month over the average monthly claims submitted in
-- the 3 months before it), as of as_of_date(). Flows are dated by what happened in the month:
-- submissions by first-billed date, initial denials by the date of the first primary remit. The
-- avoidable / overturned / written-off columns describe that month's initial denials. See the YAML.
with months as (
    select context_id, month from {{ ref('int_revenue_cycle_months') }}
),

claims as (
    select
        context_id,
        claim_id,
        -- -1 = a billed claim whose payer cannot be found (kept, so totals stay whole)
        coalesce(primary_insurance_package_id, -1) as insurance_package_id,
        primary_payer_name,
        gross_charges,
        case when first_submitted_date <= {{ as_of_date() }} then submission_month end as submission_month,
        case when first_remit_date <= {{ as_of_date() }}
             then cast(date_trunc('month', first_remit_date) as date) end as first_remit_month,
        is_initial_denial and initial_denial_date <= {{ as_of_date() }} as is_denied,
        coalesce(overturned_date <= {{ as_of_date() }}, false) as is_overturned
    from {{ ref('int_claims') }}
    where not is_self_pay
),

write_offs as (
    select context_id, claim_id, sum(reported_amount) as denial_write_off
    from {{ ref('int_transactions') }}
    where is_denial_write_off and post_date <= {{ as_of_date() }}
    group by 1, 2
),

submitted as (
    select context_id, submission_month as month, insurance_package_id,
           count(*) as claims_submitted, sum(gross_charges) as charges_submitted
    from claims
    where submission_month is not null
    group by 1, 2, 3
),

remitted as (
    select
        c.context_id,
        c.first_remit_month as month,
        c.insurance_package_id,
        count(*) as claims_first_remitted,
        count(*) filter (where c.is_denied) as claims_denied_initial,
        sum(c.gross_charges) filter (where c.is_denied) as denied_amount_initial,
        count(*) filter (where c.is_denied and r.is_avoidable) as avoidable_denials,
        count(*) filter (where c.is_denied and c.is_overturned) as denials_overturned,
        count(*) filter (where c.is_denied and w.denial_write_off <> 0) as denials_written_off,
        sum(w.denial_write_off) filter (where c.is_denied) as denial_write_offs
    from claims c
    left join {{ ref('int_claim_primary_denial_reason') }} r
        on r.context_id = c.context_id and r.claim_id = c.claim_id
    left join write_offs w
        on w.context_id = c.context_id and w.claim_id = c.claim_id
    where c.first_remit_month is not null
    group by 1, 2, 3
),

payers as (
    select context_id, insurance_package_id, any_value(primary_payer_name) as payer_name
    from claims
    where submission_month is not null or first_remit_month is not null
    group by 1, 2
),

spine as (
    select
        m.context_id,
        m.month,
        p.insurance_package_id,
        p.payer_name,
        coalesce(s.claims_submitted, 0) as claims_submitted,
        coalesce(s.charges_submitted, 0) as charges_submitted,
        coalesce(r.claims_first_remitted, 0) as claims_first_remitted,
        coalesce(r.claims_denied_initial, 0) as claims_denied_initial,
        coalesce(r.denied_amount_initial, 0) as denied_amount_initial,
        coalesce(r.avoidable_denials, 0) as avoidable_denials,
        coalesce(r.denials_overturned, 0) as denials_overturned,
        coalesce(r.denials_written_off, 0) as denials_written_off,
        coalesce(r.denial_write_offs, 0) as denial_write_offs,
        row_number() over (partition by m.context_id, p.insurance_package_id order by m.month) as month_number
    from months m
    join payers p on p.context_id = m.context_id
    left join submitted s
        on s.context_id = m.context_id and s.month = m.month and s.insurance_package_id = p.insurance_package_id
    left join remitted r
        on r.context_id = m.context_id and r.month = m.month and r.insurance_package_id = p.insurance_package_id
),

with_baseline as (
    select
        *,
        -- HFMA denominator: the average of the 3 months before the reporting month; NULL until the
        -- practice has 3 full months of history
        case when month_number > 3 then
            sum(claims_submitted) over (partition by context_id, insurance_package_id order by month
                                        rows between 3 preceding and 1 preceding) / 3.0
        end as claims_submitted_prior_3m_avg,
        case when month_number > 3 then
            sum(charges_submitted) over (partition by context_id, insurance_package_id order by month
                                         rows between 3 preceding and 1 preceding) / 3.0
        end as charges_submitted_prior_3m_avg
    from spine
)

select
    {{ as_of_date() }} as as_of_date,
    context_id,
    month,
    insurance_package_id,
    payer_name,
    claims_submitted,
    charges_submitted,
    cast(claims_submitted_prior_3m_avg as double) as claims_submitted_prior_3m_avg,
    cast(charges_submitted_prior_3m_avg as double) as charges_submitted_prior_3m_avg,
    claims_first_remitted,
    claims_denied_initial,
    denied_amount_initial,
    cast(claims_denied_initial as double) / nullif(claims_submitted_prior_3m_avg, 0) as initial_denial_rate,
    cast(denied_amount_initial as double) / nullif(charges_submitted_prior_3m_avg, 0) as initial_denial_rate_dollars,
    cast(claims_denied_initial as double) / nullif(claims_first_remitted, 0) as initial_denial_rate_adjudicated,
    avoidable_denials,
    denials_overturned,
    denials_written_off,
    denial_write_offs
from with_baseline
