-- int_conditions: problem-list entries and encounter diagnoses matched to the value-set concepts the
-- measures use. Grain: one row per FHIR Condition and matching concept (a Condition coded in both
-- ICD-10-CM and SNOMED CT that hits the same concept through both codings appears once, with the
-- ICD-10-CM code preferred as `code`). Conditions whose codes match no concept are left out.
-- Soft-deleted conditions never reach FHIR staging; entered-in-error / refuted ones are dropped here.
with conditions as (
    select *
    from {{ ref('stg_fhir__conditions') }}
    where patient_id is not null
      and coalesce(verification_status, 'confirmed') not in ('entered-in-error', 'refuted')
),

matched as (
    select
        c.condition_id,
        v.concept,
        c.code,
        c.code_system,
        row_number() over (
            partition by c.condition_id, v.concept
            order by case c.code_system when 'icd-10-cm' then 1 when 'snomed-ct' then 2 else 3 end, c.coding_index
        ) as pick
    from {{ ref('stg_fhir__condition_codings') }} as c
    inner join {{ ref('value_sets') }} as v on v.code_system = c.code_system and v.code = c.code
    where c.element = 'code'
)

select
    c.patient_id,
    c.condition_id,
    m.concept,
    m.code,
    m.code_system,
    c.category,
    c.onset_date,
    c.abatement_date,
    c.clinical_status,
    c.encounter_id,
    c.recorded_date
from conditions as c
inner join matched as m on m.condition_id = c.condition_id and m.pick = 1
