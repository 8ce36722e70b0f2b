{#-
  Generic test: no two rows share the same values of `combination_of_columns` (a compound key,
  e.g. Data View's CONTEXTID + table id). The project installs no packages (works offline), so
  this is the small local equivalent of dbt_utils.unique_combination_of_columns.
-#}
{% test unique_combination_of_columns(model, combination_of_columns) %}
    select {{ combination_of_columns | join(', ') }}, count(*) as n_rows
    from {{ model }}
    group by {{ combination_of_columns | join(', ') }}
    having count(*) > 1
{% endtest %}
