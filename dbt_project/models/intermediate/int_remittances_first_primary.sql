-- int_remittances_first_primary: the first primary-payer remit (835) of each claim, i.e. the
-- initial adjudication, with whether it was a denial and its one primary denial reason.
-- Denial (metrics.md §2.3): zero paid with at least one non-excluded CARC. A CARC is excluded when
-- the carc_categories seed says is_denial = false (PR 1/2/3, CO-45, 23, 253, 59); a CARC the seed does
-- not know counts as a denial (fail loud rather than hide denials). CR (reversal) adjustments never count.
-- Primary reason = the non-excluded CARC with the largest adjusted amount (ties: lowest CARC text),
-- so reason categories sum to the total; the kick_codes seed is the fallback for the category.
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
    select r.context_id, r.claim_id, min(r.remit_date) as overturned_date
    from primary_remits r
    where r.remit_rank > 1 and r.paid_amount > 0
    group by 1, 2
),

denial_adjustments as (
    select
        k.context_id,
        k.era_record_id,
        k.group_code,
        k.adjustment_reason_code as carc,
        k.kick_code,
        k.kicked_amount,
        coalesce(c.denial_category, kc.denial_category, 'unmapped') as denial_category,
        coalesce(c.denial_category_name, kc.kick_reason_name, 'Unmapped CARC ' || k.adjustment_reason_code)
            as denial_category_name,
        coalesce(c.is_avoidable, kc.is_avoidable) as is_avoidable,
        row_number() over (
            partition by k.context_id, k.era_record_id
            order by k.kicked_amount desc, k.adjustment_reason_code
        ) as reason_rank,
        count(*) over (partition by k.context_id, k.era_record_id) as denial_reason_count
    from {{ ref('stg_dataview__era_kicks') }} k
    left join {{ ref('carc_categories') }} c on c.carc = k.adjustment_reason_code
    left join {{ ref('kick_codes') }} kc on kc.kick_code = k.kick_code
    where k.group_code <> 'CR'
      and coalesce(c.is_denial, true)
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
    case when r.paid_amount = 0 then d.carc end as primary_carc,
    case when r.paid_amount = 0 then d.group_code end as primary_group_code,
    case when r.paid_amount = 0 then d.kick_code end as primary_kick_code,
    case when r.paid_amount = 0 then d.kicked_amount end as primary_reason_amount,
    case when r.paid_amount = 0 then d.denial_category end as denial_category,
    case when r.paid_amount = 0 then d.denial_category_name end as denial_category_name,
    case when r.paid_amount = 0 then d.is_avoidable end as is_avoidable,
    case when r.paid_amount = 0 then coalesce(d.denial_reason_count, 0) else 0 end as denial_reason_count,
    case when r.paid_amount = 0 and d.era_record_id is not null then l.overturned_date end as overturned_date
from first_remits r
left join denial_adjustments d
    on d.context_id = r.context_id and d.era_record_id = r.era_record_id and d.reason_rank = 1
left join later_paid l
    on l.context_id = r.context_id and l.claim_id = r.claim_id
left join {{ ref('stg_dataview__insurance_packages') }} p
    on p.context_id = r.context_id and p.insurance_package_id = r.insurance_package_id
