{#-
  The project's date vars, resolved once per run into SQL DATE literals.

  as_of_date               the "today" of a run (default: the real today). Marts compute every
                           as-of figure (A/R age, open gaps) on this date, so a rerun of an old
                           day (or a sandbox world whose clock is not today) gives that day's numbers.
  measurement_period_start / measurement_period_end
                           the quality-measure period; default: the calendar year of as_of_date
                           (Jan 1 .. Dec 31), evaluated with the data to date. eCQMs are annual and
                           take ages on the period end, so a year-to-date end would drop patients
                           who reach a measure's age band later in the year (CMS117's 2nd birthday,
                           CMS125's 52) and would make every open gap "due" today.
  Each var must be an ISO date (YYYY-MM-DD); anything else stops the run with a clear message.
-#}
{% macro _iso_date_var(name, default) -%}
    {%- set value = var(name, none) -%}
    {%- if value is none or value == '' -%}
        {{ return(default) }}
    {%- endif -%}
    {%- set text = value | string -%}
    {%- if not modules.re.match('^[0-9]{4}-[0-9]{2}-[0-9]{2}$', text) -%}
        {{ exceptions.raise_compiler_error("var '" ~ name ~ "' must be an ISO date (YYYY-MM-DD), got '" ~ text ~ "'") }}
    {%- endif -%}
    {{ return(modules.datetime.date.fromisoformat(text)) }}
{%- endmacro %}


{% macro as_of_date_value() -%}
    {{ return(_iso_date_var('as_of_date', modules.datetime.date.today())) }}
{%- endmacro %}


{% macro measurement_period_start_value() -%}
    {%- set as_of = as_of_date_value() -%}
    {{ return(_iso_date_var('measurement_period_start', as_of.replace(month=1, day=1))) }}
{%- endmacro %}


{% macro measurement_period_end_value() -%}
    {%- set as_of = as_of_date_value() -%}
    {{ return(_iso_date_var('measurement_period_end', as_of.replace(month=12, day=31))) }}
{%- endmacro %}


{% macro as_of_date() -%}
    date '{{ as_of_date_value().isoformat() }}'
{%- endmacro %}


{% macro measurement_period_start() -%}
    date '{{ measurement_period_start_value().isoformat() }}'
{%- endmacro %}


{% macro measurement_period_end() -%}
    {%- set start, end = measurement_period_start_value(), measurement_period_end_value() -%}
    {%- if end < start -%}
        {{ exceptions.raise_compiler_error('measurement_period_end ' ~ end ~ ' is before measurement_period_start ' ~ start) }}
    {%- endif -%}
    date '{{ end.isoformat() }}'
{%- endmacro %}
