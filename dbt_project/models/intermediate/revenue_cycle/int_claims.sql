-- int_claims: one row per claim with its whole lifecycle as dates: charge entered, first submitted to
-- the primary payer (and whether a scrubber rule held it first), first primary remit, initial denial,
-- appeal, first primary payment, overturn and denial write-off; plus the current statuses, the primary
-- payer, the rendering provider, the service department and the date of service.
-- Dates come from the ledger, the remits and the claim notes, so marts can compute any as-of figure by
-- comparing them with as_of_date(); the *_claim_status columns are today's values (Data View keeps
-- no status history) and are not as-of.
with charges as (
    select
        context_id,
        claim_id,
        sum(amount) as gross_charges,
        min(post_date) as charge_entered_date,
        min(first_billed_date) as first_submitted_date,
        arg_max(insurance_package_id, post_date) filter (where responsible_party = 'primary') as billed_package_id,
        bool_and(responsible_party = 'patient') as is_self_pay
    from {{ ref('int_transactions') }}
    where transaction_class = 'charge'
    group by 1, 2
),

write_offs as (
    select context_id, claim_id, min(post_date) as denial_written_off_date, sum(reported_amount) as denial_write_off_amount
    from {{ ref('int_transactions') }}
    where is_denial_write_off
    group by 1, 2
),

first_paid as (
    select context_id, claim_id, min(remit_date) as first_paid_date
    from {{ ref('stg_dataview__era_records') }}
    where transfer_type = 'Primary' and paid_amount > 0
    group by 1, 2
),

-- workflow evidence from the claim notes: an appeal (status APPEALED, or a kick whose next status is
-- APPEALED, e.g. AIP / RECONSIDERATION) and scrubber holds (kicks whose denial_stage is 'scrub')
notes as (
    select
        n.context_id,
        n.claim_id,
        min(n.note_date) filter (where n.claim_status = 'APPEALED' or k.next_claim_status = 'APPEALED') as appealed_date,
        min(n.note_date) filter (where k.denial_stage = 'scrub') as first_scrub_hold_date
    from {{ ref('stg_dataview__claim_notes') }} n
    left join {{ ref('kick_codes') }} k on k.kick_code = n.kick_code
    where coalesce(n.transfer_type, 'Primary') = 'Primary'
    group by 1, 2
),

claims as (
    select * from {{ ref('stg_dataview__claims') }}
),

patient_insurance as (
    select context_id, patient_insurance_id, insurance_package_id
    from {{ ref('stg_dataview__patient_insurances') }}
),

joined as (
    select
        c.context_id,
        c.claim_id,
        c.patient_id,
        c.appointment_id,
        c.rendering_provider_id as provider_id,
        c.service_department_id as department_id,
        c.service_date,
        cast(c.claim_created_at as date) as claim_created_date,
        ch.charge_entered_date,
        coalesce(ch.gross_charges, 0) as gross_charges,
        coalesce(r.insurance_package_id, ch.billed_package_id, pi.insurance_package_id) as primary_insurance_package_id,
        coalesce(ch.is_self_pay, c.primary_patient_insurance_id is null) as is_self_pay,
        ch.first_submitted_date,
        n.first_scrub_hold_date,
        r.era_record_id as first_remit_era_record_id,
        r.remit_date as first_remit_date,
        r.paid_amount as first_remit_paid_amount,
        coalesce(r.is_denial, false) as is_initial_denial,
        case when r.is_denial then r.remit_date end as initial_denial_date,
        n.appealed_date,
        fp.first_paid_date,
        r.overturned_date,
        w.denial_written_off_date,
        coalesce(w.denial_write_off_amount, 0) as denial_write_off_amount,
        c.primary_claim_status,
        c.secondary_claim_status,
        c.patient_claim_status
    from claims c
    left join charges ch on ch.context_id = c.context_id and ch.claim_id = c.claim_id
    left join {{ ref('int_remittances_first_primary') }} r on r.context_id = c.context_id and r.claim_id = c.claim_id
    left join first_paid fp on fp.context_id = c.context_id and fp.claim_id = c.claim_id
    left join write_offs w on w.context_id = c.context_id and w.claim_id = c.claim_id
    left join notes n on n.context_id = c.context_id and n.claim_id = c.claim_id
    left join patient_insurance pi
        on pi.context_id = c.context_id and pi.patient_insurance_id = c.primary_patient_insurance_id
)

select
    j.context_id,
    j.claim_id,
    j.patient_id,
    j.appointment_id,
    j.provider_id,
    j.department_id,
    j.service_date,
    j.claim_created_date,
    j.charge_entered_date,
    j.gross_charges,
    case when j.is_self_pay then null else j.primary_insurance_package_id end as primary_insurance_package_id,
    case when j.is_self_pay then 'Self pay' else coalesce(p.insurance_package_name, 'Unknown payer') end as primary_payer_name,
    j.is_self_pay,
    j.first_submitted_date,
    cast(date_trunc('month', j.first_submitted_date) as date) as submission_month,
    -- a scrubber hold before (or without) the first submission: the claim needed manual work to go out
    coalesce(j.first_scrub_hold_date <= coalesce(j.first_submitted_date, j.first_scrub_hold_date), false) as had_scrub_hold,
    (j.first_submitted_date is not null
        and not coalesce(j.first_scrub_hold_date <= j.first_submitted_date, false)) as is_clean_claim,
    j.first_remit_era_record_id,
    j.first_remit_date,
    j.first_remit_paid_amount,
    j.is_initial_denial,
    j.initial_denial_date,
    j.appealed_date,
    j.appealed_date is not null as is_appealed,
    j.first_paid_date,
    j.overturned_date is not null as is_overturned,
    j.overturned_date,
    j.denial_written_off_date,
    j.denial_write_off_amount,
    j.primary_claim_status,
    j.secondary_claim_status,
    j.patient_claim_status,
    -- who the claim is waiting on now: the first of primary, secondary, patient whose status is still open
    case
        when coalesce(j.primary_claim_status, 'NONE') not in ('CLOSED', 'NONE') then 'primary'
        when coalesce(j.secondary_claim_status, 'NONE') not in ('CLOSED', 'NONE') then 'secondary'
        when coalesce(j.patient_claim_status, 'NONE') not in ('CLOSED', 'NONE') then 'patient'
        else 'none'
    end as current_responsible_party,
    case
        when coalesce(j.primary_claim_status, 'NONE') not in ('CLOSED', 'NONE') then j.primary_claim_status
        when coalesce(j.secondary_claim_status, 'NONE') not in ('CLOSED', 'NONE') then j.secondary_claim_status
        when coalesce(j.patient_claim_status, 'NONE') not in ('CLOSED', 'NONE') then j.patient_claim_status
        else 'CLOSED'
    end as current_status
from joined j
left join {{ ref('stg_dataview__insurance_packages') }} p
    on p.context_id = j.context_id and p.insurance_package_id = j.primary_insurance_package_id
