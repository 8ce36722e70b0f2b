-- CMS124 (Cervical cancer screening) denominator: women 24-64 at the end of the measurement period (MP;
-- described as 21-64, recent versions start at 24 so three years of cytology fit) with a qualifying
-- visit in the MP. Grain: one row per patient.
{% set mp_start = measurement_period_start() %}
{% set mp_end = measurement_period_end() %}
with visits as (
    select patient_id, count(*) as visit_count, max(encounter_date) as last_visit_date
    from {{ ref('int_visits') }}
    where encounter_date between {{ mp_start }} and {{ mp_end }}
    group by patient_id
)

select
    'CMS124' as measure_id,
    {{ mp_start }} as period_start,
    {{ mp_end }} as period_end,
    p.patient_id,
    p.birth_date,
    p.age_at_period_end,
    v.visit_count,
    v.last_visit_date
from {{ ref('int_patients') }} as p
inner join visits as v on v.patient_id = p.patient_id
where p.sex = 'F'
  and p.age_at_period_end between 24 and 64
