-- CMS117 (childhood immunization status) denominator: children whose 2nd birthday falls in the
-- measurement period and who had a visit (office, preventive or telehealth) in it.
-- Grain: one row per patient in the denominator.
{% set population %}
select patient_id, birth_date, second_birthday
from (
    select patient_id, birth_date, cast(birth_date + interval 2 year as date) as second_birthday
    from {{ ref('int_patients') }}
    where birth_date is not null
)
where second_birthday between {{ measurement_period_start() }} and {{ measurement_period_end() }}
{% endset %}
{{ quality_denominator('CMS117', population, visit_types=['VISIT', 'PREVENTIVE', 'TELEHEALTH']) }}
