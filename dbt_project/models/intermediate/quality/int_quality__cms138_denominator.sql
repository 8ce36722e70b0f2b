-- CMS138 (tobacco use screening and cessation intervention) denominator: patients aged 18 or older
-- on the first day of the measurement period with at least two visits (office, preventive or
-- telehealth encounters) or at least one preventive visit in it.
-- Grain: one row per patient in the denominator.
{% set population %}
select patient_id, birth_date, age_at_period_start
from {{ ref('int_patients') }}
where age_at_period_start >= 18
{% endset %}
{{ quality_denominator('CMS138', population, visit_types=['VISIT', 'PREVENTIVE', 'TELEHEALTH'],
                       min_visits=2, preventive_visit_suffices=true) }}
