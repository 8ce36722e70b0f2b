-- CMS2 (depression screening and follow-up plan) denominator: patients aged 12 or older on the first
-- day of the measurement period with a visit (office, preventive or telehealth) in it.
-- Grain: one row per patient in the denominator.
with period_visits as (
    select
        v.patient_id,
        count(*) as visit_count,
        max(v.encounter_date) as last_visit_date
    from {{ ref('int_visits') }} as v
    where v.visit_type in ('VISIT', 'PREVENTIVE', 'TELEHEALTH')
      and v.encounter_date between {{ measurement_period_start() }} and {{ measurement_period_end() }}
    group by v.patient_id
)

select
    'CMS2' as measure_id,
    {{ measurement_period_start() }} as period_start,
    {{ measurement_period_end() }} as period_end,
    p.patient_id,
    p.birth_date,
    p.age_at_period_start,
    pv.visit_count,
    pv.last_visit_date
from {{ ref('int_patients') }} as p
inner join period_visits as pv on pv.patient_id = p.patient_id
where p.age_at_period_start >= 12
