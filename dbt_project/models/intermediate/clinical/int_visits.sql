-- int_visits: the live qualifying encounters (office, preventive and telehealth visits) the quality
-- measures' "a visit in the measurement period" rules count. Grain: one row per FHIR Encounter.
-- Classification from the coded visit, not free text: a VR (virtual) class is TELEHEALTH; a type coded
-- in the preventive value sets (preventive_care_new_patient / _established_patient,
-- annual_wellness_visit) is PREVENTIVE; a type coded in office_visit is VISIT. Anything else
-- (procedure-only encounters such as a colonoscopy slot, cancelled or entered-in-error encounters) is
-- left out. Soft-deleted encounters never reach FHIR staging (the export lists them as deletions).
-- provider_id / department_id are the athenaOne (Data View) ids: the performer's NPI matched to
-- PROVIDER, the encounter Location's athenaOne department identifier.
with encounters as (
    select *
    from {{ ref('stg_fhir__encounters') }}
    where patient_id is not null
      and encounter_date is not null
      and coalesce(status, 'unknown') not in ('cancelled', 'entered-in-error')
),

visit_codes as (
    select distinct
        code_system,
        code,
        case when concept = 'office_visit' then 'VISIT' else 'PREVENTIVE' end as visit_type
    from {{ ref('value_sets') }}
    where concept in ('office_visit', 'preventive_care_new_patient', 'preventive_care_established_patient',
                      'annual_wellness_visit')
),

coded as (
    -- every coding of Encounter.type; PREVENTIVE wins over VISIT when an encounter carries both
    select
        c.encounter_id,
        max(case v.visit_type when 'PREVENTIVE' then 2 when 'VISIT' then 1 end) as visit_rank
    from {{ ref('stg_fhir__encounter_codings') }} as c
    inner join visit_codes as v on v.code_system = c.code_system and v.code = c.code
    where c.element = 'type'
    group by c.encounter_id
),

providers as (
    select p.practitioner_id, max(d.provider_id) as provider_id
    from {{ ref('stg_fhir__practitioners') }} as p
    inner join {{ ref('stg_dataview__providers') }} as d on d.npi = p.npi
    group by p.practitioner_id
),

locations as (
    select location_id, athena_department_id as department_id
    from {{ ref('stg_fhir__locations') }}
),

classified as (
    select
        e.patient_id,
        e.encounter_id,
        e.encounter_date,
        e.period_start_at as encounter_at,
        case
            when e.class_code = 'VR' then 'TELEHEALTH'
            when c.visit_rank = 2 then 'PREVENTIVE'
            when c.visit_rank = 1 then 'VISIT'
        end as visit_type,
        e.type_code as visit_code,
        e.class_code,
        e.status,
        pr.provider_id,
        l.department_id,
        e.practitioner_id,
        e.location_id
    from encounters as e
    left join coded as c on c.encounter_id = e.encounter_id
    left join providers as pr on pr.practitioner_id = e.practitioner_id
    left join locations as l on l.location_id = e.location_id
)

select
    patient_id,
    encounter_id,
    encounter_date,
    encounter_at,
    visit_type,
    visit_type in ('VISIT', 'PREVENTIVE') as is_in_person,
    visit_code,
    class_code,
    status,
    provider_id,
    department_id,
    practitioner_id,
    location_id
from classified
where visit_type is not null
