-- CMS125 (Breast cancer screening) denominator: women 52-74 at the end of the measurement period (MP;
-- the measure describes them as 50-74, the 27-month look-back makes it 52) with a qualifying visit in
-- the MP. Grain: one row per patient.
{% set population %}
select patient_id, age_at_period_end
from {{ ref('int_patients') }}
where sex = 'F' and age_at_period_end between 52 and 74
{% endset %}
{{ quality_denominator('CMS125', population) }}
