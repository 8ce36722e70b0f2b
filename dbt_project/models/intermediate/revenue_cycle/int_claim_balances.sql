-- int_claim_balances: open balance per claim and responsible party (primary, secondary, patient)
-- as of as_of_date(), summed from the TRANSACTION ledger (every row posted on or before the as-of
-- date; athenaOne signs CHARGE and TRANSFERIN positive, PAYMENT, ADJUSTMENT and TRANSFEROUT
-- negative). Rebuilding from the ledger, not CLAIM.*OUTSTANDING, is what lets a past as-of date be
-- reported. Voided rows are kept: athenaOne posts the offsetting reversal as its own row.
with ledger as (
    select
        context_id,
        claim_id,
        lower(transfer_type) as responsible_party,
        insurance_package_id,
        amount,
        post_date
    from {{ ref('stg_dataview__transactions') }}
    where post_date <= {{ as_of_date() }}
),

balances as (
    select
        context_id,
        claim_id,
        responsible_party,
        -- payer of the party: the package on its latest row (NULL for the patient)
        arg_max(insurance_package_id, post_date) filter (where insurance_package_id is not null)
            as insurance_package_id,
        sum(amount) as open_balance,
        min(post_date) as first_post_date,
        max(post_date) as last_post_date
    from ledger
    group by 1, 2, 3
)

select
    {{ as_of_date() }} as as_of_date,
    b.context_id,
    b.claim_id,
    c.patient_id,
    b.responsible_party,
    b.insurance_package_id,
    case when b.responsible_party = 'patient' then 'Patient'
         else coalesce(p.insurance_package_name, 'Unknown payer') end as payer_name,
    c.service_date,
    -- age by date of service, never re-aged on transfer (metrics.md §1.2); a service date after the
    -- as-of date (not expected) ages as 0 days
    greatest({{ as_of_date() }} - c.service_date, 0) as days_since_service,
    b.open_balance,
    b.first_post_date,
    b.last_post_date
from balances b
left join {{ ref('stg_dataview__claims') }} c
    on c.context_id = b.context_id and c.claim_id = b.claim_id
left join {{ ref('stg_dataview__insurance_packages') }} p
    on p.context_id = b.context_id and p.insurance_package_id = b.insurance_package_id
