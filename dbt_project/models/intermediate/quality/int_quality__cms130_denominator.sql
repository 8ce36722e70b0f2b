-- CMS130 (Colorectal cancer screening) denominator: patients 46-75 at the end of the measurement period
-- (MP; described as 45-75) with a qualifying visit in the MP. Grain: one row per patient.
{% set population %}
select patient_id, age_at_period_end
from {{ ref('int_patients') }}
where age_at_period_end between 46 and 75
{% endset %}
{{ quality_denominator('CMS130', population) }}
