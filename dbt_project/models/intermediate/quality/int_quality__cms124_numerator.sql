-- CMS124 numerator: cervical cytology in the measurement period (MP) or the 2 years before, done at age
-- >= 21, OR a high-risk HPV test in the MP or the 4 years before, done at age >= 30. Windows open the
-- look-back before the MP START and close at the MP end.
-- Grain: one row per denominator patient, met or not. Evidence: the qualifying test that counts the
-- longest; without one, the most recent test on record.
-- due_date: for a gap, the period end; when met, the end of the last calendar-year period the test still
-- counts for (Dec 31 two years after a cytology, four years after an HPV test).
{% set tests %}
select
    t.patient_id,
    t.performed_date,
    case t.concept when 'cervical_cytology' then 24 else 48 end as lookback_months,
    t.concept || ' ' || t.code as label,
    case t.concept when 'cervical_cytology' then 21 else 30 end as min_age,
    d.birth_date
from {{ ref('int_procedures') }} as t
inner join denominator as d on d.patient_id = t.patient_id
where t.concept in ('cervical_cytology', 'hpv_test')
  and t.performed_date <= {{ measurement_period_end() }}
{% endset %}
{{ quality_lookback_numerator(
    'cms124', tests,
    no_evidence_reason='No cervical cytology or HPV test on record',
    outside_window_reason='Last cervical screening outside its look-back window (or too young at the test)',
    eligible='performed_date >= cast(birth_date + to_years(min_age) as date)') }}
