-- CMS124 (Cervical cancer screening) denominator: women 24-64 at the end of the measurement period (MP;
-- described as 21-64, recent versions start at 24 so three years of cytology fit) with a qualifying
-- visit in the MP. Grain: one row per patient.
{% set population %}
select patient_id, birth_date, age_at_period_end
from {{ ref('int_patients') }}
where sex = 'F' and age_at_period_end between 24 and 64
{% endset %}
{{ quality_denominator('CMS124', population) }}
