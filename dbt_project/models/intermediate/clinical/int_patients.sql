-- int_patients: one row per live FHIR Patient, with sex, ages on the measurement period's bounds and
-- the attribution (provider, department) the quality marts group by.
-- Attribution: the Data View PATIENT row of the same athenaOne patient (joined on the Patient's
-- athenaOne identifier: context id + patient id) gives PRIMARYPROVIDERID / CURRENTDEPARTMENTID;
-- when there is none (or it is blank), the provider / department of the patient's most recent
-- qualifying visit (int_visits) is used. Soft-deleted patients never reach FHIR staging (the
-- export lists them as deletions).
-- Ages are completed years (the birthday must have been reached), the ground truth's rule.
with fhir_patients as (
    select * from {{ ref('stg_fhir__patients') }}
),

dataview_patients as (
    select context_id, patient_id, primary_provider_id, current_department_id, registration_department_id
    from {{ ref('stg_dataview__patients') }}
),

last_visit as (
    select
        patient_id,
        arg_max(provider_id, encounter_date) filter (where provider_id is not null) as provider_id,
        arg_max(department_id, encounter_date) filter (where department_id is not null) as department_id
    from {{ ref('int_visits') }}
    group by patient_id
),

joined as (
    select
        p.patient_id,
        p.birth_date,
        case
            when upper(p.birth_sex) in ('F', 'M') then upper(p.birth_sex)
            when p.gender = 'female' then 'F'
            when p.gender = 'male' then 'M'
            else coalesce(p.gender, 'unknown')
        end as sex,
        p.is_deceased,
        p.deceased_date,
        p.athena_patient_id,
        coalesce(p.athena_context_id, d.context_id) as context_id,
        coalesce(d.primary_provider_id, v.provider_id) as provider_id,
        coalesce(d.current_department_id, d.registration_department_id, v.department_id) as department_id,
        case
            when d.primary_provider_id is not null then 'dataview_primary_provider'
            when v.provider_id is not null then 'most_recent_visit'
        end as provider_attribution
    from fhir_patients as p
    left join dataview_patients as d
        on d.patient_id = p.athena_patient_id and d.context_id = p.athena_context_id
    left join last_visit as v on v.patient_id = p.patient_id
    where p.patient_id is not null
)

select
    patient_id,
    birth_date,
    sex,
    date_diff('year', birth_date, {{ measurement_period_end() }})
        - case when strftime(birth_date, '%m%d') > strftime({{ measurement_period_end() }}, '%m%d') then 1 else 0 end as age_at_period_end,
    date_diff('year', birth_date, {{ measurement_period_start() }})
        - case when strftime(birth_date, '%m%d') > strftime({{ measurement_period_start() }}, '%m%d') then 1 else 0 end as age_at_period_start,
    is_deceased,
    deceased_date,
    athena_patient_id,
    context_id,
    provider_id,
    department_id,
    provider_attribution
from joined
