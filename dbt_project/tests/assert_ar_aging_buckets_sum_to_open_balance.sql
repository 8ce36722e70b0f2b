-- A/R buckets sum to the open balance: per practice and responsible party, the bucketed A/R equals
-- the positive claim balances and the credit rows equal the negative ones (nothing dropped or netted).
with ledger as (
    select context_id, responsible_party,
           coalesce(sum(open_balance) filter (where open_balance > 0), 0) as debit,
           coalesce(sum(open_balance) filter (where open_balance < 0), 0) as credit
    from {{ ref('int_claim_balances') }}
    group by 1, 2
),
mart as (
    select context_id, responsible_party,
           coalesce(sum(open_balance) filter (where balance_type = 'open_balance' and aging_bucket is not null), 0) as debit,
           coalesce(sum(open_balance) filter (where balance_type = 'credit_balance'), 0) as credit
    from {{ ref('ar_aging') }}
    group by 1, 2
)
select *
from ledger l
full outer join mart m using (context_id, responsible_party)
where coalesce(l.debit, 0) <> coalesce(m.debit, 0)
   or coalesce(l.credit, 0) <> coalesce(m.credit, 0)
