-- CMS122 numerator (INVERSE measure: meeting it is bad): the most recent HbA1c in the measurement
-- period is > 9.0 %, or it has no result, or there is no HbA1c in the period at all.
-- Grain: one row per denominator patient, met or not, with the evidence that decides it.
-- Simplified vs the real eCQM, following the ground truth: only HbA1c lab results count (no GMI, no
-- CPT II 3044F-3052F result codes); ties on the same instant take the highest value.
{% set mp_start = measurement_period_start() %}
{% set mp_end = measurement_period_end() %}
with denominator as (
    select patient_id, period_end from {{ ref('int_quality__cms122_denominator') }}
),

tests as (
    select
        o.patient_id,
        o.effective_at,
        o.effective_date,
        o.value_numeric,
        o.unit,
        row_number() over (partition by o.patient_id
                           order by o.effective_at desc, o.value_numeric desc nulls first, o.observation_id) as recency
    from {{ ref('int_observations') }} as o
    inner join denominator as d on d.patient_id = o.patient_id
    where o.concept = 'hba1c_lab_test'
      and o.effective_date between {{ mp_start }} and {{ mp_end }}
),

last_test as (
    select * from tests where recency = 1
)

select
    d.patient_id,
    t.patient_id is null or t.value_numeric is null or t.value_numeric > 9.0 as in_numerator,
    case
        when t.patient_id is null then 'No HbA1c test in the period'
        when t.value_numeric is null then 'Most recent HbA1c has no result'
        when t.value_numeric > 9.0 then 'Most recent HbA1c > 9.0%'
    end as gap_reason,
    t.effective_date as last_evidence_date,
    case when t.patient_id is not null
         then coalesce(cast(t.value_numeric as varchar) || coalesce(' ' || t.unit, ''), 'no result') end
        as last_evidence_value,
    t.value_numeric as last_hba1c_value,
    d.period_end as due_date
from denominator as d
left join last_test as t on t.patient_id = d.patient_id
