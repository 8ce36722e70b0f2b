{#-
  A quality measure's denominator: the measure's population (its age band, sex, diagnosis) restricted
  to the patients with qualifying visits in the measurement period (MP). Every eCQM denominator here is
  "these patients, seen in the period"; only the population and which visits qualify differ, so each
  _denominator model states its population in SQL and this macro adds the visits, the shared leading
  columns and the join. Grain: one row per patient.

  measure_id        'CMS124' -> the measure_id column
  population        SQL select, one row per patient: patient_id first, then the columns the model
                    keeps (they follow patient_id in the output, in that order)
  visit_types       int_visits.visit_type values that qualify; none: every visit in int_visits
  min_visits        the patient needs at least this many qualifying visits in the MP
  preventive_visit_suffices
                    true (CMS138): one preventive visit qualifies the patient even below
                    min_visits, and the output gains preventive_visit_count

  Output: measure_id, period_start, period_end, <population columns>, visit_count,
  [preventive_visit_count,] last_visit_date.
-#}
{% macro quality_denominator(measure_id, population, visit_types=none, min_visits=1,
                             preventive_visit_suffices=false) -%}
{%- set mp_start = measurement_period_start() -%}
{%- set mp_end = measurement_period_end() -%}
with population as (
    {{ population | trim | indent(4) }}
),

visits as (
    select
        patient_id,
        count(*) as visit_count,
        {%- if preventive_visit_suffices %}
        count(*) filter (where visit_type = 'PREVENTIVE') as preventive_visit_count,
        {%- endif %}
        max(encounter_date) as last_visit_date
    from {{ ref('int_visits') }}
    where encounter_date between {{ mp_start }} and {{ mp_end }}
      {%- if visit_types is not none %}
      and visit_type in ('{{ visit_types | join("', '") }}')
      {%- endif %}
    group by patient_id
)

select
    '{{ measure_id }}' as measure_id,
    {{ mp_start }} as period_start,
    {{ mp_end }} as period_end,
    p.*,
    v.visit_count,
    {%- if preventive_visit_suffices %}
    v.preventive_visit_count,
    {%- endif %}
    v.last_visit_date
from population as p
inner join visits as v on v.patient_id = p.patient_id
{%- if preventive_visit_suffices %}
where v.visit_count >= {{ min_visits }} or v.preventive_visit_count >= 1
{%- elif min_visits > 1 %}
where v.visit_count >= {{ min_visits }}
{%- endif %}
{%- endmacro %}
