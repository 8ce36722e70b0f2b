-- CMS138 numerator evaluation: the most recent tobacco smoking status (72166-2) in the measurement
-- period; a non-user meets the numerator, a tobacco user needs a cessation intervention (counseling
-- 99406/99407, or a cessation medication such as varenicline) from 6 months before the period
-- through its end. A status without a coded answer is not a screening here.
-- Grain: one row per denominator patient (met or not), with the evidence that decides it.
with denominator as (
    select patient_id, period_end
    from {{ ref('int_quality__cms138_denominator') }}
),

user_codes as (
    select distinct code
    from {{ ref('value_sets') }}
    where concept = 'tobacco_user'
),

statuses as (
    -- smoking statuses with an answer in the period, most recent first; on a tie at the same instant
    -- the tobacco-user answer wins (it is the one that needs an intervention)
    select
        o.patient_id,
        o.effective_at,
        o.value_code,
        row_number() over (
            partition by o.patient_id
            order by o.effective_at desc,
                     case when o.value_code in (select code from user_codes) then 0 else 1 end,
                     o.value_code, o.observation_id
        ) as recency
    from {{ ref('int_observations') }} as o
    inner join denominator as d on d.patient_id = o.patient_id
    where o.concept = 'tobacco_use_screening'
      and o.value_code is not null
      and o.effective_date between {{ measurement_period_start() }} and {{ measurement_period_end() }}
),

last_status as (
    select patient_id, value_code as last_code, cast(effective_at as date) as last_date
    from statuses
    where recency = 1
),

interventions as (
    select p.patient_id, p.performed_date as intervention_date, 'cessation counseling' as intervention
    from {{ ref('int_procedures') }} as p
    inner join denominator as d on d.patient_id = p.patient_id
    where p.concept = 'tobacco_cessation_counseling'
      and p.performed_date between cast({{ measurement_period_start() }} - interval 6 month as date)
                               and {{ measurement_period_end() }}
    union all
    select m.patient_id, m.authored_on, 'cessation medication'
    from {{ ref('int_medications') }} as m
    inner join denominator as d on d.patient_id = m.patient_id
    where m.concept = 'tobacco_cessation_medication'
      and m.authored_on between cast({{ measurement_period_start() }} - interval 6 month as date)
                            and {{ measurement_period_end() }}
),

last_intervention as (
    select patient_id, intervention_date, intervention
    from interventions
    qualify row_number() over (partition by patient_id order by intervention_date desc, intervention) = 1
),

judged as (
    select
        s.patient_id,
        s.last_code,
        s.last_date,
        s.last_code in (select code from user_codes) as is_user
    from last_status as s
)

select
    d.patient_id,
    coalesce(j.last_code is not null and (not j.is_user or i.intervention_date is not null), false) as in_numerator,
    case
        when j.patient_id is null then 'No tobacco use screening in the period'
        when j.is_user and i.intervention_date is null
            then 'Tobacco user without a cessation intervention (counseling or medication)'
    end as gap_reason,
    case when j.is_user then greatest(j.last_date, i.intervention_date) else j.last_date end as last_evidence_date,
    case
        when j.patient_id is null then null
        when not j.is_user then 'non-user'
        when i.intervention_date is not null
            then 'tobacco user, ' || i.intervention || ' ' || strftime(i.intervention_date, '%Y-%m-%d')
        else 'tobacco user, no cessation intervention'
    end as last_evidence_value,
    d.period_end as due_date
from denominator as d
left join judged as j on j.patient_id = d.patient_id
left join last_intervention as i on i.patient_id = d.patient_id
