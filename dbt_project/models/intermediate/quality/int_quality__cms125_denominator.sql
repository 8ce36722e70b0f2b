-- CMS125 (Breast cancer screening) denominator: women 52-74 at the end of the measurement period (MP;
-- the measure describes them as 50-74, the 27-month look-back makes it 52) with a qualifying visit in
-- the MP. Grain: one row per patient.
{% set mp_start = measurement_period_start() %}
{% set mp_end = measurement_period_end() %}
with visits as (
    select patient_id, count(*) as visit_count, max(encounter_date) as last_visit_date
    from {{ ref('int_visits') }}
    where encounter_date between {{ mp_start }} and {{ mp_end }}
    group by patient_id
)

select
    'CMS125' as measure_id,
    {{ mp_start }} as period_start,
    {{ mp_end }} as period_end,
    p.patient_id,
    p.age_at_period_end,
    v.visit_count,
    v.last_visit_date
from {{ ref('int_patients') }} as p
inner join visits as v on v.patient_id = p.patient_id
where p.sex = 'F'
  and p.age_at_period_end between 52 and 74
