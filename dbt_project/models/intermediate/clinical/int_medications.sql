-- int_medications: medication orders (FHIR MedicationRequest) matched to the value-set concepts the
-- measures use (dementia_medication, tobacco_cessation_medication, ...). Grain: one row per
-- MedicationRequest and matching concept. Orders entered in error are dropped; every other status
-- (active, completed, stopped, ...) is kept, as the ground truth counts an order whatever became of it.
with requests as (
    select *
    from {{ ref('stg_fhir__medication_requests') }}
    where patient_id is not null
      and coalesce(status, 'unknown') <> 'entered-in-error'
),

matched as (
    select
        c.medication_request_id,
        v.concept,
        c.code,
        c.code_system,
        row_number() over (partition by c.medication_request_id, v.concept order by c.coding_index) as pick
    from {{ ref('stg_fhir__medication_request_codings') }} as c
    inner join {{ ref('value_sets') }} as v on v.code_system = c.code_system and v.code = c.code
)

select
    r.patient_id,
    r.medication_request_id,
    m.concept,
    m.code,
    m.code_system,
    r.authored_date as authored_on,
    r.status,
    r.intent,
    r.encounter_id
from requests as r
inner join matched as m on m.medication_request_id = r.medication_request_id and m.pick = 1
