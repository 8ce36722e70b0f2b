-- CMS165 (Controlling high blood pressure) denominator: patients 18-85 at the end of the measurement
-- period (MP) with essential hypertension starting before the 7th month of the MP (before Jul 1 for a
-- calendar-year MP) and not resolved before the MP starts, and a qualifying visit in the MP.
-- Grain: one row per patient.
{% set population %}
select p.patient_id, p.age_at_period_end, h.first_onset_date as hypertension_onset_date
from {{ ref('int_patients') }} as p
inner join ({{ quality_active_condition(
    'essential_hypertension', onset_before='cast(' ~ measurement_period_start() ~ ' + interval 6 month as date)') }}) as h
    on h.patient_id = p.patient_id
where p.age_at_period_end between 18 and 85
{% endset %}
{{ quality_denominator('CMS165', population) }}
