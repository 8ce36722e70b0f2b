-- Every denial rate in denials_by_payer_month is a share: within [0, 1] (NULL when no denominator).
select *
from {{ ref('denials_by_payer_month') }}
where initial_denial_rate not between 0 and 1
   or initial_denial_rate_dollars not between 0 and 1
   or initial_denial_rate_adjudicated not between 0 and 1
   or avoidable_denials > claims_denied_initial
   or denials_overturned > claims_denied_initial
