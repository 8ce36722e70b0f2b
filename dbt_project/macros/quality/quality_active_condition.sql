{#-
  The patients with a diagnosis active during the measurement period (MP): onset by a bound the measure
  sets, and not resolved (abated) before the MP starts. A select, one row per patient, with
  first_onset_date (the earliest qualifying onset); denominators join it into their population
  (CMS122 diabetes, CMS165 essential hypertension).

  concept       int_conditions.concept, e.g. 'diabetes'
  onset_by      SQL date: onset on or before it counts (CMS122: the MP end)
  onset_before  SQL date: onset strictly before it counts (CMS165: the 7th month of the MP)
                exactly one of onset_by / onset_before
-#}
{% macro quality_active_condition(concept, onset_by=none, onset_before=none) -%}
{%- if (onset_by is none) == (onset_before is none) -%}
    {{ exceptions.raise_compiler_error("quality_active_condition('" ~ concept ~ "'): give exactly one of onset_by / onset_before") }}
{%- endif -%}
select patient_id, min(onset_date) as first_onset_date
from {{ ref('int_conditions') }}
where concept = '{{ concept }}'
  and onset_date {{ '<= ' ~ onset_by if onset_by is not none else '< ' ~ onset_before }}
  and (abatement_date is null or abatement_date >= {{ measurement_period_start() }})
group by patient_id
{%- endmacro %}
