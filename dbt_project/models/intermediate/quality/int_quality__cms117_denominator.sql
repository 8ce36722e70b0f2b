-- CMS117 (childhood immunization status) denominator: children whose 2nd birthday falls in the
-- measurement period and who had a visit (office, preventive or telehealth) in it.
-- Grain: one row per patient in the denominator.
with patients as (
    select patient_id, birth_date, cast(birth_date + interval 2 year as date) as second_birthday
    from {{ ref('int_patients') }}
    where birth_date is not null
),

period_visits as (
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
    'CMS117' as measure_id,
    {{ measurement_period_start() }} as period_start,
    {{ measurement_period_end() }} as period_end,
    p.patient_id,
    p.birth_date,
    p.second_birthday,
    pv.visit_count,
    pv.last_visit_date
from patients as p
inner join period_visits as pv on pv.patient_id = p.patient_id
where p.second_birthday between {{ measurement_period_start() }} and {{ measurement_period_end() }}
