-- CMS2 (depression screening and follow-up plan) denominator: patients aged 12 or older on the first
-- day of the measurement period with a visit (office, preventive or telehealth) in it.
-- Grain: one row per patient in the denominator.
{% set population %}
select patient_id, birth_date, age_at_period_start
from {{ ref('int_patients') }}
where age_at_period_start >= 12
{% endset %}
{{ quality_denominator('CMS2', population, visit_types=['VISIT', 'PREVENTIVE', 'TELEHEALTH']) }}
