-- CMS69 (BMI screening and follow-up plan) denominator: patients aged 18 or older on the first day
-- of the measurement period with an in-person visit (office or preventive; telehealth does not
-- count, a BMI needs a weight taken in person) in it.
-- Grain: one row per patient in the denominator.
{% set population %}
select patient_id, birth_date, age_at_period_start
from {{ ref('int_patients') }}
where age_at_period_start >= 18
{% endset %}
{{ quality_denominator('CMS69', population, visit_types=['VISIT', 'PREVENTIVE']) }}
