-- Each initially denied claim has exactly one primary denial reason (so reasons sum to the total),
-- and claims that were not denied have none.
select context_id, claim_id, count(*) as n_rows,
       count(primary_carc) as n_reasons, bool_or(is_denial) as is_denial
from {{ ref('int_remittances_first_primary') }}
group by 1, 2
having count(*) <> 1
    or (bool_or(is_denial) and count(primary_carc) <> 1)
    or (not bool_or(is_denial) and count(primary_carc) <> 0)
