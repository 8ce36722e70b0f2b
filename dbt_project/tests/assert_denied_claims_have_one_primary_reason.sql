-- Each initially denied claim has exactly one primary denial reason (so reasons sum to the total), and
-- claims whose first primary remit was not a denial have none.
select coalesce(f.context_id, r.context_id) as context_id, coalesce(f.claim_id, r.claim_id) as claim_id,
       f.is_denial, count(r.claim_id) as n_reasons
from {{ ref('int_remittances_first_primary') }} f
full outer join {{ ref('int_claim_primary_denial_reason') }} r
    on r.context_id = f.context_id and r.claim_id = f.claim_id
group by 1, 2, 3
having count(r.claim_id) <> (case when coalesce(f.is_denial, false) then 1 else 0 end)
