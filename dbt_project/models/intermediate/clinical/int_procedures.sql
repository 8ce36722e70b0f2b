-- int_procedures: procedures, screenings and quality codes matched to value-set concepts, from the
-- chart AND from billing. Grain: one row per patient, concept and performed date.
-- Sources, in order of preference when the same (patient, concept, date) is seen more than once:
--   1. FHIR Procedure (source 'fhir', source_resource 'Procedure'), any status but not-done /
--      entered-in-error;
--   2. Data View TRANSACTION charge lines (source 'claim', source_resource 'TRANSACTION'): the
--      procedure code of a live, unvoided CHARGE, dated on the charge's service date (CHARGEFROMDATE,
--      else the claim's service date), mapped to the FHIR patient through the Patient's athenaOne
--      identifier (context id + patient id). Billing is the only trace of some procedures (a colonoscopy
--      done by the practice's proceduralist but never charted as a Procedure);
--   3. FHIR Encounter.type (source 'fhir', source_resource 'Encounter'): an encounter billed with a
--      procedure code (a colonoscopy slot is an encounter typed CPT 45378), dated on the encounter; this
--      catches a procedure visit whose claim is not created yet (charge entry lags the visit).
-- Encounter types and charge lines are matched only to concepts some measure uses in a role other
-- than 'qualifying_encounter' (measure_concepts), so visit codes (99213, ...) do not flood this table.
with measure_procedure_concepts as (
    select distinct concept
    from {{ ref('measure_concepts') }}
    where role <> 'qualifying_encounter'
),

value_sets as (
    select concept, code_system, code from {{ ref('value_sets') }}
),

fhir_procedures as (
    select
        p.patient_id,
        p.procedure_id,
        v.concept,
        c.code,
        c.code_system,
        p.performed_date,
        'fhir' as source,
        'Procedure' as source_resource,
        1 as source_rank,
        c.coding_index
    from {{ ref('stg_fhir__procedures') }} as p
    inner join {{ ref('stg_fhir__procedure_codings') }} as c on c.procedure_id = p.procedure_id
    inner join value_sets as v on v.code_system = c.code_system and v.code = c.code
    where c.element = 'code'
      and p.patient_id is not null
      and p.performed_date is not null
      and coalesce(p.status, 'completed') not in ('not-done', 'entered-in-error')
),

encounter_procedures as (
    select
        e.patient_id,
        e.encounter_id as procedure_id,
        v.concept,
        c.code,
        c.code_system,
        e.encounter_date as performed_date,
        'fhir' as source,
        'Encounter' as source_resource,
        3 as source_rank,
        c.coding_index
    from {{ ref('stg_fhir__encounters') }} as e
    inner join {{ ref('stg_fhir__encounter_codings') }} as c on c.encounter_id = e.encounter_id
    inner join value_sets as v on v.code_system = c.code_system and v.code = c.code
    inner join measure_procedure_concepts as m on m.concept = v.concept
    where c.element = 'type'
      and e.patient_id is not null
      and e.encounter_date is not null
      and coalesce(e.status, 'unknown') not in ('cancelled', 'entered-in-error')
),

fhir_patients as (
    select patient_id, athena_context_id, athena_patient_id
    from {{ ref('stg_fhir__patients') }}
    where athena_patient_id is not null
),

charges as (
    select
        t.context_id,
        t.transaction_id,
        t.patient_id as athena_patient_id,
        upper(trim(t.procedure_code)) as procedure_code,
        coalesce(t.charge_from_date, cl.service_date) as service_date
    from {{ ref('stg_dataview__transactions') }} as t
    left join {{ ref('stg_dataview__claims') }} as cl
        on cl.claim_id = t.claim_id and cl.context_id = t.context_id
    where t.transaction_type = 'CHARGE'
      and t.voided_date is null
      and not coalesce(t.is_reversal, false)
      and t.procedure_code is not null
),

claim_procedures as (
    select
        p.patient_id,
        'claim-' || cast(ch.context_id as varchar) || '-' || cast(ch.transaction_id as varchar) as procedure_id,
        v.concept,
        v.code,
        v.code_system,
        ch.service_date as performed_date,
        'claim' as source,
        'TRANSACTION' as source_resource,
        2 as source_rank,
        1 as coding_index
    from charges as ch
    inner join fhir_patients as p
        on p.athena_patient_id = ch.athena_patient_id and p.athena_context_id = ch.context_id
    inner join value_sets as v on v.code_system in ('cpt', 'hcpcs') and v.code = ch.procedure_code
    inner join measure_procedure_concepts as m on m.concept = v.concept
    where ch.service_date is not null
),

all_procedures as (
    select * from fhir_procedures
    union all
    select * from encounter_procedures
    union all
    select * from claim_procedures
),

ranked as (
    select
        *,
        bool_or(source = 'claim') over (partition by patient_id, concept, performed_date) as is_billed,
        bool_or(source = 'fhir') over (partition by patient_id, concept, performed_date) as is_charted,
        row_number() over (
            partition by patient_id, concept, performed_date
            order by source_rank, procedure_id, coding_index
        ) as pick
    from all_procedures
)

select
    patient_id,
    procedure_id,
    concept,
    code,
    code_system,
    performed_date,
    source,
    source_resource,
    is_charted,
    is_billed
from ranked
where pick = 1
