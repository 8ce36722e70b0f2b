-- denials_by_payer_month: initial denials per primary payer and submission month (a claim cohort:
-- every measure of a row is about the claims first billed to that payer in that month), as of
-- as_of_date(). See the YAML for the denominators and how they differ from HFMA.
with charges as (
    -- claims billed to a primary payer: first billed date and gross charges from the CHARGE rows
    select
        context_id,
        claim_id,
        cast(min(first_billed_at) as date) as first_billed_date,
        arg_max(insurance_package_id, post_date) filter (where transfer_type = 'Primary') as billed_package_id,
        sum(amount) as gross_charges
    from {{ ref('stg_dataview__transactions') }}
    where transaction_type = 'CHARGE'
      and post_date <= {{ as_of_date() }}
    group by 1, 2
),

first_remits as (
    select *
    from {{ ref('int_remittances_first_primary') }}
    where remit_date <= {{ as_of_date() }}
),

write_offs as (
    select context_id, claim_id, -sum(amount) as denial_write_off
    from {{ ref('stg_dataview__transactions') }}
    where transaction_type = 'ADJUSTMENT'
      and transaction_reason = 'DENIAL WRITE OFF'
      and post_date <= {{ as_of_date() }}
    group by 1, 2
),

claims as (
    select
        coalesce(c.context_id, r.context_id) as context_id,
        coalesce(c.claim_id, r.claim_id) as claim_id,
        coalesce(r.insurance_package_id, c.billed_package_id) as insurance_package_id,
        cast(date_trunc('month', coalesce(c.first_billed_date, r.remit_date)) as date) as submission_month,
        c.first_billed_date is not null as is_submitted,
        coalesce(c.gross_charges, r.billed_amount) as gross_charges,
        r.claim_id is not null as is_first_remitted,
        coalesce(r.is_denial, false) as is_denied_initial,
        coalesce(r.is_denial and r.is_avoidable, false) as is_avoidable_denial,
        coalesce(r.is_denial and r.overturned_date <= {{ as_of_date() }}, false) as is_overturned,
        coalesce(w.denial_write_off, 0) as denial_write_off
    from (select * from charges where first_billed_date <= {{ as_of_date() }}) c
    full outer join first_remits r
        on r.context_id = c.context_id and r.claim_id = c.claim_id
    left join write_offs w
        on w.context_id = coalesce(c.context_id, r.context_id) and w.claim_id = coalesce(c.claim_id, r.claim_id)
),

monthly as (
    select
        context_id,
        submission_month,
        insurance_package_id,
        count(*) filter (where is_submitted) as claims_submitted,
        coalesce(sum(gross_charges) filter (where is_submitted), 0) as charges_submitted,
        count(*) filter (where is_first_remitted) as claims_first_remitted,
        count(*) filter (where is_denied_initial) as claims_denied_initial,
        coalesce(sum(gross_charges) filter (where is_denied_initial), 0) as denied_amount_initial,
        count(*) filter (where is_avoidable_denial) as avoidable_denials,
        count(*) filter (where is_overturned) as denials_overturned,
        sum(denial_write_off) as denial_write_offs
    from claims
    group by 1, 2, 3
)

select
    {{ as_of_date() }} as as_of_date,
    m.context_id,
    m.submission_month,
    m.insurance_package_id,
    coalesce(p.insurance_package_name, 'Unknown payer') as payer_name,
    m.claims_submitted,
    m.charges_submitted,
    m.claims_first_remitted,
    m.claims_denied_initial,
    m.denied_amount_initial,
    cast(m.claims_denied_initial as double) / nullif(m.claims_submitted, 0) as initial_denial_rate,
    cast(m.denied_amount_initial as double) / nullif(m.charges_submitted, 0) as initial_denial_rate_dollars,
    cast(m.claims_denied_initial as double) / nullif(m.claims_first_remitted, 0) as initial_denial_rate_adjudicated,
    m.avoidable_denials,
    m.denials_overturned,
    m.denial_write_offs
from monthly m
left join {{ ref('stg_dataview__insurance_packages') }} p
    on p.context_id = m.context_id and p.insurance_package_id = m.insurance_package_id
