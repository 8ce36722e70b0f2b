-- denial_reasons: initial denials by month, primary payer, denial category, CARC and kick code, as of
-- as_of_date(). Each denied claim is counted once, under its one primary reason
-- (int_claim_primary_denial_reason), so the rows of a month and payer sum to
-- denials_by_payer_month.claims_denied_initial and the shares sum to 1.
with denials as (
    select
        r.context_id,
        r.claim_id,
        r.denial_month as month,
        coalesce(c.primary_insurance_package_id, -1) as insurance_package_id,
        c.primary_payer_name as payer_name,
        r.denial_category,
        r.denial_category_name,
        r.carc,
        r.carc_description,
        r.kick_code,
        r.is_avoidable,
        c.gross_charges,
        coalesce(c.overturned_date <= {{ as_of_date() }}, false) as is_overturned
    from {{ ref('int_claim_primary_denial_reason') }} r
    join {{ ref('int_claims') }} c
        on c.context_id = r.context_id and c.claim_id = r.claim_id
    where r.denial_date <= {{ as_of_date() }}
),

grouped as (
    select
        context_id,
        month,
        insurance_package_id,
        any_value(payer_name) as payer_name,
        denial_category,
        any_value(denial_category_name) as denial_category_name,
        carc,
        any_value(carc_description) as carc_description,
        kick_code,
        -- the category decides avoidability, so it is the same on every claim of the row
        bool_or(is_avoidable) as is_avoidable,
        count(*) as denied_claims,
        sum(gross_charges) as denied_amount,
        count(*) filter (where is_overturned) as denials_overturned
    from denials
    group by context_id, month, insurance_package_id, denial_category, carc, kick_code
)

select
    {{ as_of_date() }} as as_of_date,
    context_id,
    month,
    insurance_package_id,
    payer_name,
    denial_category,
    denial_category_name,
    carc,
    carc_description,
    kick_code,
    is_avoidable,
    denied_claims,
    denied_amount,
    cast(denied_claims as double)
        / sum(denied_claims) over (partition by context_id, month, insurance_package_id) as share_of_payer_denials,
    cast(denied_amount as double)
        / nullif(sum(denied_amount) over (partition by context_id, month, insurance_package_id), 0)
        as share_of_payer_denied_amount,
    denials_overturned
from grouped
