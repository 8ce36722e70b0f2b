-- int_transactions: every TRANSACTION ledger row, classified into the money flows the revenue-cycle
-- KPIs are made of (charge, payment, refund, contractual / other adjustment, transfer), with the
-- claim's provider, department and date of service attached so marts can group without re-joining.
-- The ledger sign is kept (athenaOne: CHARGE and TRANSFERIN positive, PAYMENT, ADJUSTMENT and
-- TRANSFEROUT negative) and a `reported_amount` is added in the sign a reader expects (charges,
-- payments, adjustments and refunds all positive). Not filtered by as_of_date: marts filter on post_date.
with ledger as (
    select * from {{ ref('stg_dataview__transactions') }}
),

claims as (
    select context_id, claim_id, rendering_provider_id, service_department_id, service_date
    from {{ ref('stg_dataview__claims') }}
),

classified as (
    select
        t.*,
        case
            when t.transaction_type = 'CHARGE' then 'charge'
            -- money handed back (a refund of a credit balance) is posted as a PAYMENT that raises the balance
            when t.transaction_type = 'PAYMENT'
                 and (upper(coalesce(t.transaction_reason, '')) like '%REFUND%' or t.amount > 0) then 'refund'
            when t.transaction_type = 'PAYMENT' then 'payment'
            when t.transaction_type = 'ADJUSTMENT'
                 and upper(coalesce(t.transaction_reason, '')) like '%CONTRACT%' then 'contractual_adjustment'
            when t.transaction_type = 'ADJUSTMENT' then 'other_adjustment'
            when t.transaction_type in ('TRANSFERIN', 'TRANSFEROUT') then 'transfer'
            else 'other'
        end as transaction_class
    from ledger t
)

select
    t.context_id,
    t.transaction_id,
    t.claim_id,
    t.patient_id,
    t.charge_id,
    t.transaction_type,
    t.transaction_reason,
    t.transaction_class,
    -- adjustment kinds the denial and bad-debt KPIs single out (athenaOne adjustment reasons)
    (t.transaction_class = 'other_adjustment'
        and upper(coalesce(t.transaction_reason, '')) like '%DENIAL%') as is_denial_write_off,
    (t.transaction_class = 'other_adjustment'
        and upper(coalesce(t.transaction_reason, '')) like '%BAD DEBT%') as is_bad_debt,
    lower(t.transfer_type) as responsible_party,
    t.insurance_package_id,
    t.era_record_id,
    t.procedure_code,
    t.post_date,
    cast(date_trunc('month', t.post_date) as date) as post_month,
    -- when the charge was first billed to the primary payer (CHARGE rows only; NULL for self-pay)
    cast(t.first_billed_at as date) as first_billed_date,
    t.amount,
    case
        when t.transaction_class in ('payment', 'contractual_adjustment', 'other_adjustment') then -t.amount
        else t.amount
    end as reported_amount,
    c.rendering_provider_id as provider_id,
    c.service_department_id as department_id,
    c.service_date
from classified t
left join claims c
    on c.context_id = t.context_id and c.claim_id = t.claim_id
