-- CMS122 (Diabetes: HbA1c poor control > 9%) denominator: patients 18-75 at the end of the measurement
-- period (MP) with diabetes active during it (onset on or before MP end, not resolved before MP start)
-- and a qualifying visit (office, preventive or telehealth) in it. Grain: one row per patient.
{% set mp_start = measurement_period_start() %}
{% set mp_end = measurement_period_end() %}
with diabetes as (
    select patient_id, min(onset_date) as first_onset_date
    from {{ ref('int_conditions') }}
    where concept = 'diabetes'
      and onset_date <= {{ mp_end }}
      and (abatement_date is null or abatement_date >= {{ mp_start }})
    group by patient_id
),

visits as (
    select patient_id, count(*) as visit_count, max(encounter_date) as last_visit_date
    from {{ ref('int_visits') }}
    where encounter_date between {{ mp_start }} and {{ mp_end }}
    group by patient_id
)

select
    'CMS122' as measure_id,
    {{ mp_start }} as period_start,
    {{ mp_end }} as period_end,
    p.patient_id,
    p.age_at_period_end,
    d.first_onset_date as diabetes_onset_date,
    v.visit_count,
    v.last_visit_date
from {{ ref('int_patients') }} as p
inner join diabetes as d on d.patient_id = p.patient_id
inner join visits as v on v.patient_id = p.patient_id
where p.age_at_period_end between 18 and 75
