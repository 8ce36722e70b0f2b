-- Every rate that is a share of a whole lies within [0, 1] (NULL when its denominator is 0), in every
-- revenue-cycle, denial and appointment mart; parts never exceed their whole. The HFMA initial denial
-- rates and the monthly collection / write-off rates divide by a different set of claims or money
-- (prior months' submissions, the month's charges), so they are only checked to be non-negative.
select 'denials_by_payer_month' as mart, cast(month as varchar) as row_key
from {{ ref('denials_by_payer_month') }}
where initial_denial_rate_adjudicated not between 0 and 1
   or initial_denial_rate < 0
   or initial_denial_rate_dollars < 0
   or claims_denied_initial > claims_first_remitted
   or avoidable_denials > claims_denied_initial
   or denials_overturned > claims_denied_initial
   or denials_written_off > claims_denied_initial

union all

select 'denial_reasons', cast(month as varchar)
from {{ ref('denial_reasons') }}
where share_of_payer_denials not between 0 and 1
   or share_of_payer_denied_amount not between 0 and 1
   or denials_overturned > denied_claims

union all

select 'revenue_cycle_kpis', cast(month as varchar) || ' ' || grain_level
from {{ ref('revenue_cycle_kpis') }}
where clean_claim_rate not between 0 and 1
   or first_pass_resolution_rate not between 0 and 1
   or ar_over_90_pct not between 0 and 1
   or initial_denial_rate < 0
   or days_in_ar < 0
   or denial_write_off_pct < 0
   or clean_claims > claims_submitted
   or claims_denied_initial + first_pass_resolved <> claims_first_remitted
   or ar_over_90_end_of_month > ar_end_of_month
   or credit_balance_end_of_month > 0

union all

select 'appointment_utilization', cast(week_start as varchar)
from {{ ref('appointment_utilization') }}
where no_show_rate not between 0 and 1
   or late_cancellations > cancellations
   or reschedules > cancellations
   or completed + no_shows > appointments_outcome_known
   or cancellations + appointments_outcome_known > booked
