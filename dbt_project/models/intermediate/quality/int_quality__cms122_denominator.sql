-- CMS122 (Diabetes: HbA1c poor control > 9%) denominator: patients 18-75 at the end of the measurement
-- period (MP) with diabetes active during it (onset on or before MP end, not resolved before MP start)
-- and a qualifying visit (office, preventive or telehealth) in it. Grain: one row per patient.
{% set population %}
select p.patient_id, p.age_at_period_end, d.first_onset_date as diabetes_onset_date
from {{ ref('int_patients') }} as p
inner join ({{ quality_active_condition('diabetes', onset_by=measurement_period_end()) }}) as d
    on d.patient_id = p.patient_id
where p.age_at_period_end between 18 and 75
{% endset %}
{{ quality_denominator('CMS122', population) }}
