-- CMS125 numerator: a mammogram from October 1 two years before the measurement period through its end
-- (27 months for a calendar-year period: the window opens 15 months before the period starts).
-- Grain: one row per denominator patient, met or not. Evidence is the most recent mammogram on or before
-- the period end, in the window or not (an older one explains the gap). Biopsy, ultrasound and MRI are not
-- in the value set. due_date: for a gap, the period end; when met, the end of the last calendar-year
-- period the mammogram still counts for (Dec 31 of the year 15 months after it): the next screening
-- must be done by then.
{% set mammograms %}
select m.patient_id, m.performed_date, 15 as lookback_months, 'mammography ' || m.code as label
from {{ ref('int_procedures') }} as m
inner join denominator as d on d.patient_id = m.patient_id
where m.concept = 'mammography'
  and m.performed_date <= {{ measurement_period_end() }}
{% endset %}
{{ quality_lookback_numerator(
    'cms125', mammograms,
    no_evidence_reason='No mammogram on record',
    outside_window_reason='Last mammogram older than the 27-month window') }}
