-- The ledger's money flows reconcile with the open balances, claim by claim, on the as-of date:
-- charges - (payments - refunds) - contractual adjustments - other adjustments = the sum of the claim's
-- open balances over its responsible parties (int_claim_balances), and transfers between parties net to
-- zero. A ledger row the classification does not know ('other') fails the test too.
with flows as (
    select
        context_id,
        claim_id,
        coalesce(sum(reported_amount) filter (where transaction_class = 'charge'), 0)
          - coalesce(sum(reported_amount) filter (where transaction_class = 'payment'), 0)
          + coalesce(sum(reported_amount) filter (where transaction_class = 'refund'), 0)
          - coalesce(sum(reported_amount) filter (where transaction_class = 'contractual_adjustment'), 0)
          - coalesce(sum(reported_amount) filter (where transaction_class = 'other_adjustment'), 0) as net_flows,
        coalesce(sum(amount) filter (where transaction_class = 'transfer'), 0) as net_transfers,
        count(*) filter (where transaction_class = 'other') as unclassified_rows
    from {{ ref('int_transactions') }}
    where post_date <= {{ as_of_date() }}
    group by 1, 2
),
balances as (
    select context_id, claim_id, sum(open_balance) as open_balance
    from {{ ref('int_claim_balances') }}
    group by 1, 2
)
select *
from flows f
full outer join balances b using (context_id, claim_id)
where coalesce(f.net_flows, 0) <> coalesce(b.open_balance, 0)
   or coalesce(f.net_transfers, 0) <> 0
   or coalesce(f.unclassified_rows, 0) > 0
