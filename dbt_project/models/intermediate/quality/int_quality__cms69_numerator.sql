-- CMS69 numerator evaluation: the most recent BMI (39156-5) in the measurement period; a normal BMI
-- (18.5 to < 25 kg/m2) meets the numerator, any other needs a BMI follow-up plan (G8417/G8418) in
-- the period.
-- Grain: one row per denominator patient (met or not), with the evidence that decides it.
with denominator as (
    select patient_id, period_end
    from {{ ref('int_quality__cms69_denominator') }}
),

bmis as (
    -- BMIs with a value in the period, most recent first; on a tie at the same instant the higher value wins
    select
        o.patient_id,
        o.effective_at,
        o.value_numeric,
        row_number() over (
            partition by o.patient_id
            order by o.effective_at desc, o.value_numeric desc, o.observation_id
        ) as recency
    from {{ ref('int_observations') }} as o
    inner join denominator as d on d.patient_id = o.patient_id
    where o.concept = 'bmi'
      and o.value_numeric is not null
      and o.effective_date between {{ measurement_period_start() }} and {{ measurement_period_end() }}
),

last_bmi as (
    select patient_id, value_numeric as bmi, cast(effective_at as date) as bmi_date
    from bmis
    where recency = 1
),

follow_ups as (
    select p.patient_id, max(p.performed_date) as follow_up_date
    from {{ ref('int_procedures') }} as p
    inner join denominator as d on d.patient_id = p.patient_id
    where p.concept = 'bmi_follow_up'
      and p.performed_date between {{ measurement_period_start() }} and {{ measurement_period_end() }}
    group by p.patient_id
),

judged as (
    select
        d.patient_id,
        d.period_end,
        b.bmi,
        b.bmi_date,
        b.bmi >= 18.5 and b.bmi < 25 as is_normal,
        f.follow_up_date
    from denominator as d
    left join last_bmi as b on b.patient_id = d.patient_id
    left join follow_ups as f on f.patient_id = d.patient_id
)

select
    patient_id,
    coalesce(bmi is not null and (is_normal or follow_up_date is not null), false) as in_numerator,
    case
        when bmi is null then 'No BMI documented in the period'
        when not is_normal and follow_up_date is null
            then 'Most recent BMI ' || case when bmi < 18.5 then 'below' else 'above' end
                 || ' normal, no follow-up plan in the period'
    end as gap_reason,
    bmi_date as last_evidence_date,
    case
        when bmi is null then null
        when is_normal then 'BMI ' || cast(bmi as varchar)
        when follow_up_date is not null
            then 'BMI ' || cast(bmi as varchar) || ', follow-up plan ' || strftime(follow_up_date, '%Y-%m-%d')
        else 'BMI ' || cast(bmi as varchar) || ', no follow-up plan'
    end as last_evidence_value,
    period_end as due_date
from judged
