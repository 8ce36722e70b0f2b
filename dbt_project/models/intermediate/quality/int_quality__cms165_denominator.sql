-- CMS165 (Controlling high blood pressure) denominator: patients 18-85 at the end of the measurement
-- period (MP) with essential hypertension starting before the 7th month of the MP (before Jul 1 for a
-- calendar-year MP) and not resolved before the MP starts, and a qualifying visit in the MP.
-- Grain: one row per patient.
{% set mp_start = measurement_period_start() %}
{% set mp_end = measurement_period_end() %}
with hypertension as (
    select patient_id, min(onset_date) as first_onset_date
    from {{ ref('int_conditions') }}
    where concept = 'essential_hypertension'
      and onset_date < cast({{ mp_start }} + interval 6 month as date)
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
    'CMS165' as measure_id,
    {{ mp_start }} as period_start,
    {{ mp_end }} as period_end,
    p.patient_id,
    p.age_at_period_end,
    h.first_onset_date as hypertension_onset_date,
    v.visit_count,
    v.last_visit_date
from {{ ref('int_patients') }} as p
inner join hypertension as h on h.patient_id = p.patient_id
inner join visits as v on v.patient_id = p.patient_id
where p.age_at_period_end between 18 and 85
