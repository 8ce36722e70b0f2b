-- CMS125 numerator: a mammogram from October 1 two years before the measurement period through its end
-- (27 months for a calendar-year period: the window opens 15 months before the period starts).
-- Grain: one row per denominator patient, met or not. Evidence is the most recent mammogram on or before
-- the period end, in the window or not (an older one explains the gap). Biopsy, ultrasound and MRI are not
-- in the value set. due_date: for a gap, the period end; when met, the end of the last calendar-year
-- period the mammogram still counts for (Dec 31 of the year 15 months after it): the next screening
-- must be done by then.
{% set mp_start = measurement_period_start() %}
{% set mp_end = measurement_period_end() %}
with denominator as (
    select patient_id, period_end from {{ ref('int_quality__cms125_denominator') }}
),

mammograms as (
    select
        m.patient_id,
        max(m.performed_date) as last_date,
        arg_max(m.code, m.performed_date) as last_code,
        bool_or(m.performed_date >= cast({{ mp_start }} - interval 15 month as date)) as in_window
    from {{ ref('int_procedures') }} as m
    inner join denominator as d on d.patient_id = m.patient_id
    where m.concept = 'mammography'
      and m.performed_date <= {{ mp_end }}
    group by m.patient_id
)

select
    d.patient_id,
    coalesce(m.in_window, false) as in_numerator,
    case
        when m.patient_id is null then 'No mammogram on record'
        when not m.in_window then 'Last mammogram older than the 27-month window'
    end as gap_reason,
    m.last_date as last_evidence_date,
    case when m.patient_id is not null then 'mammography ' || m.last_code end as last_evidence_value,
    case when coalesce(m.in_window, false) then cast(date_trunc('year', m.last_date + interval 15 month) + interval 1 year - interval 1 day as date)
         else d.period_end end as due_date
from denominator as d
left join mammograms as m on m.patient_id = d.patient_id
