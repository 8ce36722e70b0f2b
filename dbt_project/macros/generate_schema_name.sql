{#-
  Use a model's custom schema verbatim (`marts`, not dbt's default `main_marts`), so the
  publisher and anyone with a SQL prompt find the marts at `marts.<name>`. Models without a
  custom schema stay in the target schema (`main`).
-#}
{% macro generate_schema_name(custom_schema_name, node) -%}
    {%- if custom_schema_name is none -%}
        {{ target.schema }}
    {%- else -%}
        {{ custom_schema_name | trim }}
    {%- endif -%}
{%- endmacro %}
