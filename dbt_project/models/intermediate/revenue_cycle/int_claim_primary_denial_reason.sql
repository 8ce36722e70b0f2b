-- int_claim_primary_denial_reason: exactly one primary reason per initially denied claim, so denial
-- categories sum to the number of denials (metrics.md §2.3).
-- Rule: among the denial-reason lines of the claim's first primary remit (int_remittance_lines.
-- is_denial_reason), the one with the largest adjusted amount; ties go to the lowest CARC (text order),
-- then the lowest ERAKICK id, so the choice is deterministic.
with denied as (
    select context_id, claim_id, era_record_id, insurance_package_id, remit_date, remit_month, denial_reason_count
    from {{ ref('int_remittances_first_primary') }}
    where is_denial
),

ranked as (
    select
        d.context_id,
        d.claim_id,
        d.era_record_id,
        d.insurance_package_id,
        d.remit_date,
        d.remit_month,
        d.denial_reason_count,
        l.era_kick_id,
        l.group_code,
        l.carc,
        l.carc_description,
        l.kick_code,
        l.kicked_amount,
        l.category_source,
        l.denial_category,
        l.denial_category_name,
        l.is_avoidable,
        row_number() over (
            partition by d.context_id, d.claim_id
            order by l.kicked_amount desc nulls last, l.carc nulls last, l.era_kick_id
        ) as reason_rank
    from denied d
    join {{ ref('int_remittance_lines') }} l
        on l.context_id = d.context_id and l.era_record_id = d.era_record_id
    where l.is_denial_reason
)

select
    context_id,
    claim_id,
    era_record_id,
    insurance_package_id,
    remit_date as denial_date,
    remit_month as denial_month,
    era_kick_id,
    group_code,
    carc,
    carc_description,
    kick_code,
    kicked_amount as reason_amount,
    category_source,
    denial_category,
    denial_category_name,
    coalesce(is_avoidable, false) as is_avoidable,
    denial_reason_count
from ranked
where reason_rank = 1
