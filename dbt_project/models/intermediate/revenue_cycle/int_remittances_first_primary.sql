-- int_remittances_first_primary: the first primary-payer remit (835) of each claim, i.e. the
-- initial adjudication, and whether it was a denial.
-- Denial (metrics.md §2.3): zero paid with at least one denial-reason line (int_remittance_lines.
-- is_denial_reason: not CR, not a cost-share / contractual / prior-payer CARC). A zero-paid remit whose
-- lines are all cost share (e.g. the deductible absorbed the allowed amount) is not a denial.
-- The primary denial reason lives in int_claim_primary_denial_reason; this model only says which remit
-- was first and what happened on it, plus whether a later primary remit paid (overturned).
with primary_remits as (
    select
        *,
        row_number() over (
            partition by context_id, claim_id
            order by remit_sequence, remit_date, era_record_id
        ) as remit_rank
    from {{ ref('stg_dataview__era_records') }}
    where transfer_type = 'Primary'
),

first_remits as (
    select * exclude (remit_rank)
    from primary_remits
    where remit_rank = 1
),

-- the first later primary remit that paid something: an initial denial overturned (appeal or resubmission)
later_paid as (
    select context_id, claim_id, min(remit_date) as overturned_date
    from primary_remits
    where remit_rank > 1 and paid_amount > 0
    group by 1, 2
),

denial_reasons as (
    select context_id, era_record_id, count(*) as denial_reason_count
    from {{ ref('int_remittance_lines') }}
    where is_denial_reason
    group by 1, 2
)

select
    r.context_id,
    r.claim_id,
    r.era_record_id,
    r.patient_id,
    r.insurance_package_id,
    p.insurance_package_name,
    r.remit_date,
    cast(date_trunc('month', r.remit_date) as date) as remit_month,
    r.billed_amount,
    r.allowed_amount,
    r.paid_amount,
    r.patient_responsibility_amount,
    (r.paid_amount = 0 and d.era_record_id is not null) as is_denial,
    r.is_denial as era_denial_flag,
    case when r.paid_amount = 0 then coalesce(d.denial_reason_count, 0) else 0 end as denial_reason_count,
    case when r.paid_amount = 0 and d.era_record_id is not null then l.overturned_date end as overturned_date
from first_remits r
left join denial_reasons d
    on d.context_id = r.context_id and d.era_record_id = r.era_record_id
left join later_paid l
    on l.context_id = r.context_id and l.claim_id = r.claim_id
left join {{ ref('stg_dataview__insurance_packages') }} p
    on p.context_id = r.context_id and p.insurance_package_id = r.insurance_package_id
