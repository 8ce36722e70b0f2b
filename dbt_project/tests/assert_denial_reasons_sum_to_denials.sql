-- denial_reasons counts each initial denial once: per practice, month and payer its rows sum to
-- denials_by_payer_month's claims_denied_initial and denied_amount_initial, and its shares sum to 1.
with reasons as (
    select context_id, month, insurance_package_id,
           sum(denied_claims) as denied, sum(denied_amount) as amount, sum(share_of_payer_denials) as shares
    from {{ ref('denial_reasons') }}
    group by 1, 2, 3
),
denials as (
    select context_id, month, insurance_package_id,
           claims_denied_initial as denied, denied_amount_initial as amount
    from {{ ref('denials_by_payer_month') }}
    where claims_denied_initial > 0
)
select *
from denials d
full outer join reasons r using (context_id, month, insurance_package_id)
where coalesce(d.denied, 0) <> coalesce(r.denied, 0)
   or coalesce(d.amount, 0) <> coalesce(r.amount, 0)
   or abs(r.shares - 1) > 1e-9
