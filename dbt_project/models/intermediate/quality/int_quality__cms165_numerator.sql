-- CMS165 numerator: on the most recent day in the measurement period with a blood pressure reading, the
-- LOWEST systolic of that day is < 140 mmHg and the LOWEST diastolic of that day is < 90 mmHg (the two
-- lowest may come from different readings). No reading in the period = not controlled.
-- Grain: one row per denominator patient, met or not.
-- Simplified vs the real eCQM, following the ground truth: every reading counts (readings taken in
-- the emergency department, inpatient or on a test / procedure day are not set apart) and the CPT II
-- codes G8752 / G8754 from claims are not used.
{% set mp_start = measurement_period_start() %}
{% set mp_end = measurement_period_end() %}
with denominator as (
    select patient_id, period_end from {{ ref('int_quality__cms165_denominator') }}
),

readings as (
    select o.patient_id, o.effective_date, o.value_systolic, o.value_diastolic
    from {{ ref('int_observations') }} as o
    inner join denominator as d on d.patient_id = o.patient_id
    where (o.value_systolic is not null or o.value_diastolic is not null)
      and o.effective_date between {{ mp_start }} and {{ mp_end }}
),

last_day as (
    select patient_id, max(effective_date) as reading_date
    from readings
    group by patient_id
),

lowest as (
    select
        r.patient_id,
        l.reading_date,
        min(r.value_systolic) as systolic,
        min(r.value_diastolic) as diastolic,
        count(*) as readings_that_day
    from readings as r
    inner join last_day as l on l.patient_id = r.patient_id and l.reading_date = r.effective_date
    group by r.patient_id, l.reading_date
)

select
    d.patient_id,
    coalesce(b.systolic < 140 and b.diastolic < 90, false) as in_numerator,
    case
        when b.patient_id is null then 'No blood pressure reading in the period'
        when b.systolic is null or b.diastolic is null then 'Most recent blood pressure incomplete'
        when b.systolic >= 140 and b.diastolic >= 90 then 'Most recent blood pressure >= 140/90'
        when b.systolic >= 140 then 'Most recent systolic >= 140'
        when b.diastolic >= 90 then 'Most recent diastolic >= 90'
    end as gap_reason,
    b.reading_date as last_evidence_date,
    case when b.patient_id is not null
         then coalesce(regexp_replace(cast(b.systolic as varchar), '\.0$', ''), '?') || '/'
              || coalesce(regexp_replace(cast(b.diastolic as varchar), '\.0$', ''), '?') || ' mmHg' end as last_evidence_value,
    b.systolic as lowest_systolic,
    b.diastolic as lowest_diastolic,
    b.readings_that_day,
    -- not a look-back measure: only an open gap has a due date (the period end)
    case when not coalesce(b.systolic < 140 and b.diastolic < 90, false) then d.period_end end as due_date
from denominator as d
left join lowest as b on b.patient_id = d.patient_id
