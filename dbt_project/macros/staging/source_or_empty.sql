{#-
  A source table that may not exist yet in this warehouse.

  Why: a warehouse only has the raw tables its loads created. A third-party FHIR export (Synthea
  has no Observation), a practice whose Data View share lacks an experimental table, or a first
  run before a table was ever loaded must still build every staging model, with zero rows, so the
  marts build and say "no data" instead of the whole DAG failing.

  `source()` is always called, so dbt (and Dagster, through the manifest) keeps the lineage
  source -> model whether or not the table exists at run time. At parse time (`execute` false)
  the source relation is returned untouched.
-#}
{% macro relation_exists(relation) -%}
    {%- if not execute -%}
        {{ return(true) }}
    {%- endif -%}
    {%- set found = adapter.get_relation(database=relation.database, schema=relation.schema,
                                         identifier=relation.identifier) -%}
    {{ return(found is not none) }}
{%- endmacro %}


{#- `(select cast(null as <type>) as "<name>", ... where false)`: zero rows, the given columns and types. -#}
{% macro empty_relation(columns) -%}
    {%- set selected = [] -%}
    {%- for column in columns -%}
        {%- do selected.append('cast(null as ' ~ column[1] ~ ') as ' ~ adapter.quote(column[0])) -%}
    {%- endfor -%}
    {{ return('(select ' ~ selected | join(', ') ~ ' where false)') }}
{%- endmacro %}


{#-
  The source relation if its table exists, else an empty relation with `columns`
  (a list of (name, sql type) pairs), logged so a missing table is visible in dbt's output.
-#}
{% macro source_or_empty(source_name, table_name, columns) -%}
    {%- set relation = source(source_name, table_name) -%}
    {%- if relation_exists(relation) -%}
        {{ return(relation) }}
    {%- endif -%}
    {%- do log('source ' ~ source_name ~ '.' ~ table_name ~ ' does not exist in this warehouse: '
               ~ model.name ~ ' builds with zero rows', info=true) -%}
    {{ return(empty_relation(columns)) }}
{%- endmacro %}
