-- CMS138 (tobacco use screening and cessation intervention) denominator: patients aged 18 or older
-- on the first day of the measurement period with at least two visits (office, preventive or
-- telehealth encounters) or at least one preventive visit in it.
-- Grain: one row per patient in the denominator.
with period_visits as (
    select
        v.patient_id,
        count(*) as visit_count,
        count(*) filter (where v.visit_type = 'PREVENTIVE') as preventive_visit_count,
        max(v.encounter_date) as last_visit_date
    from {{ ref('int_visits') }} as v
    where v.visit_type in ('VISIT', 'PREVENTIVE', 'TELEHEALTH')
      and v.encounter_date between {{ measurement_period_start() }} and {{ measurement_period_end() }}
    group by v.patient_id
)

select
    'CMS138' as measure_id,
    {{ measurement_period_start() }} as period_start,
    {{ measurement_period_end() }} as period_end,
    p.patient_id,
    p.birth_date,
    p.age_at_period_start,
    pv.visit_count,
    pv.preventive_visit_count,
    pv.last_visit_date
from {{ ref('int_patients') }} as p
inner join period_visits as pv on pv.patient_id = p.patient_id
where p.age_at_period_start >= 18
  and (pv.visit_count >= 2 or pv.preventive_visit_count >= 1)
