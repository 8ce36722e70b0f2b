-- CMS2 numerator evaluation: the most recent standardized depression screening in the measurement
-- period (adult 73832-8 / adolescent 73831-0); a negative result meets the numerator, any other result
-- needs a depression follow-up plan (G8431) the same day or up to 2 days after that screening.
-- A screening without a coded result is not counted as a screening.
-- Grain: one row per denominator patient (met or not), with the evidence that decides it.
with denominator as (
    select patient_id, period_end
    from {{ ref('int_quality__cms2_denominator') }}
),

result_codes as (
    select distinct concept, code
    from {{ ref('value_sets') }}
    where concept in ('depression_screening_negative', 'depression_screening_positive')
),

screenings as (
    -- screenings with a result in the period, most recent first; on a tie at the same instant the
    -- positive result wins (it is the one that needs a follow-up)
    select
        o.patient_id,
        o.effective_at,
        o.value_code,
        row_number() over (
            partition by o.patient_id
            order by o.effective_at desc,
                     case when o.value_code in (select code from result_codes
                                                where concept = 'depression_screening_negative')
                          then 1 else 0 end,
                     o.value_code, o.observation_id
        ) as recency
    from {{ ref('int_observations') }} as o
    inner join denominator as d on d.patient_id = o.patient_id
    where o.concept in ('adult_depression_screening', 'adolescent_depression_screening')
      and o.value_code is not null
      and o.effective_date between {{ measurement_period_start() }} and {{ measurement_period_end() }}
),

last_screening as (
    select patient_id, value_code as last_code, cast(effective_at as date) as last_date
    from screenings
    where recency = 1
),

judged as (
    select
        s.patient_id,
        s.last_code,
        s.last_date,
        coalesce(r.concept = 'depression_screening_negative', false) as is_negative,
        case r.concept
            when 'depression_screening_negative' then 'negative'
            when 'depression_screening_positive' then 'positive'
            else 'result ' || coalesce(s.last_code, 'missing')
        end as result_label
    from last_screening as s
    left join result_codes as r on r.code = s.last_code
),

follow_ups as (
    select j.patient_id, min(p.performed_date) as follow_up_date
    from judged as j
    inner join {{ ref('int_procedures') }} as p on p.patient_id = j.patient_id
    where p.concept = 'depression_follow_up'
      and p.performed_date between j.last_date and j.last_date + 2
    group by j.patient_id
)

select
    d.patient_id,
    coalesce(j.last_code is not null and (j.is_negative or f.follow_up_date is not null), false) as in_numerator,
    case
        when j.patient_id is null then 'No depression screening in the period'
        when not j.is_negative and f.follow_up_date is null
            then 'Most recent depression screening not negative, no follow-up plan within 2 days'
    end as gap_reason,
    j.last_date as last_evidence_date,
    case
        when j.patient_id is null then null
        when j.is_negative then j.result_label
        when f.follow_up_date is not null
            then j.result_label || ', follow-up plan ' || strftime(f.follow_up_date, '%Y-%m-%d')
        else j.result_label || ', no follow-up plan'
    end as last_evidence_value,
    f.follow_up_date,
    d.period_end as due_date
from denominator as d
left join judged as j on j.patient_id = d.patient_id
left join follow_ups as f on f.patient_id = d.patient_id
