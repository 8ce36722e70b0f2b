{#-
  Helpers for staging athenaOne Data View tables (raw_dataview.<table>, loaded by
  athena_pipeline/warehouse/dataview_loader.py with the upstream upper-case columns, plus
  _loaded_at and _run_id).
-#}

{#-
  Every catalogued Data View table, lower-case, in catalogue order
  (athena_pipeline/athena/dataview_catalog.py; tests/dbt/test_staging.py keeps the two equal).
-#}
{% macro dataview_tables() -%}
    {{ return(['patient', 'provider', 'department', 'insurancepackage', 'patientinsurance', 'appointmenttype',
               'appointment', 'clinicalencounter', 'clinicalencounterdiagnosis', 'patientproblem', 'document',
               'clinicalresult', 'clinicalresultobservation', 'vitalsign', 'claim', 'claimdiagnosis',
               'transaction', 'kickreason', 'claimnote', 'erarecord', 'erakick']) }}
{%- endmacro %}


{#-
  The practices to stage: var('context_ids'), a list of CONTEXTIDs (also accepted: one id, or
  a comma-separated string). Empty / null = every practice in the share. Returns a list of ints.
-#}
{% macro dataview_context_ids() -%}
    {%- set raw = var('context_ids', []) -%}
    {%- if raw is none or raw == '' -%}
        {{ return([]) }}
    {%- elif raw is string -%}
        {%- set items = raw.split(',') -%}
    {%- elif raw is number -%}
        {%- set items = [raw] -%}
    {%- else -%}
        {%- set items = raw -%}
    {%- endif -%}
    {%- set ids = [] -%}
    {%- for item in items -%}
        {%- set text = item | string | trim -%}
        {%- if text != '' -%}
            {%- if not modules.re.match('^[0-9]+$', text) -%}
                {{ exceptions.raise_compiler_error("var 'context_ids' must list integer practice ids, got '" ~ text ~ "'") }}
            {%- endif -%}
            {%- do ids.append(text | int) -%}
        {%- endif -%}
    {%- endfor -%}
    {{ return(ids) }}
{%- endmacro %}


{#- `and "CONTEXTID" in (...)` for the configured practices, nothing when staging every practice. -#}
{% macro dataview_context_filter(column='"CONTEXTID"') -%}
    {%- set ids = dataview_context_ids() -%}
    {%- if ids | length > 0 %} and {{ column }} in ({{ ids | join(', ') }}){%- endif -%}
{%- endmacro %}


{#- How a raw column becomes a staged one. Types other than these few keywords are plain casts. -#}
{% macro _dataview_expression(quoted, kind) -%}
    {%- if kind == 'yn' -%}
        (upper(cast({{ quoted }} as varchar)) = 'Y')
    {%- elif kind == 'numeric_text' -%}
        try_cast(replace(trim(cast({{ quoted }} as varchar)), ',', '') as double)
    {%- elif kind == 'utc_timestamptz' -%}
        timezone('UTC', cast({{ quoted }} as timestamptz))
    {%- else -%}
        cast({{ quoted }} as {{ kind }})
    {%- endif -%}
{%- endmacro %}


{% macro _dataview_type(kind) -%}
    {{ return({'yn': 'boolean', 'numeric_text': 'double', 'utc_timestamptz': 'timestamp'}.get(kind, kind)) }}
{%- endmacro %}


{#-
  The body of a stg_dataview__<entities> model: rename to snake_case, cast to stated types,
  drop soft-deleted rows (DELETEDDATETIME set), keep only the configured practices.

  `columns` is a list of (upstream column, kind, staged name); kind is a SQL type (a cast),
  'yn' (Y/N text -> boolean), 'numeric_text' (text -> double, NULL when not a number) or
  'utc_timestamptz' (TIMESTAMPTZ -> naive UTC TIMESTAMP, the warehouse convention).
  Every model also gets the context columns first and the audit / load columns last.

  Robust to a share that differs from ours: an upstream column missing from the raw table is
  staged as a typed NULL (and logged), and a missing raw table stages zero rows, so one
  practice's odd share never breaks the whole build. Columns present are cast strictly: a
  value that does not fit its type fails the build loudly rather than turning into NULL.
-#}
{% macro dataview_staging(table_name, columns) -%}
    {%- set context = [('CONTEXTID', 'bigint', 'context_id'),
                       ('CONTEXTNAME', 'varchar', 'context_name'),
                       ('CONTEXTPARENTCONTEXTID', 'bigint', 'context_parent_context_id')] -%}
    {%- set audit = [('CREATEDDATETIME', 'timestamp', 'created_at'),
                     ('CREATEDBY', 'varchar', 'created_by'),
                     ('LASTUPDATED', 'timestamp', 'last_updated_at'),
                     ('_loaded_at', 'utc_timestamptz', 'loaded_at'),
                     ('_run_id', 'varchar', 'load_run_id')] -%}
    {%- set all_columns = context + columns + audit -%}
    {%- set relation = source('raw_dataview', table_name) -%}
    {%- set present = [] -%}
    {%- set table_exists = relation_exists(relation) -%}
    {%- if execute and table_exists -%}
        {%- for column in adapter.get_columns_in_relation(relation) -%}
            {%- do present.append(column.name | upper) -%}
        {%- endfor -%}
    {%- endif -%}
    {%- if execute and not table_exists -%}
        {%- do log('source raw_dataview.' ~ table_name ~ ' does not exist in this warehouse: '
                   ~ model.name ~ ' builds with zero rows', info=true) -%}
    {%- endif -%}
    {%- set missing = [] -%}

with source as (
    {%- if table_exists %}
    select * from {{ relation }}
    where {{ '"DELETEDDATETIME" is null' if (not execute or 'DELETEDDATETIME' in present) else 'true' }}
        {{- dataview_context_filter() }}
    {%- else %}
    select 1 as _no_source where false
    {%- endif %}
),

staged as (
    select
    {%- for upstream, kind, name in all_columns %}
        {%- if not execute or (upstream | upper) in present %}
        {{ _dataview_expression(adapter.quote(upstream), kind) }} as {{ name }}
        {%- else %}
            {%- if table_exists %}{%- do missing.append(upstream) -%}{%- endif %}
        cast(null as {{ _dataview_type(kind) }}) as {{ name }}
        {%- endif %}
        {{- "," if not loop.last }}
    {%- endfor %}
    from source
)

select * from staged
    {%- if missing | length > 0 -%}
        {%- do log(model.name ~ ': raw_dataview.' ~ table_name ~ ' has no column(s) ' ~ missing | unique | join(', ')
                   ~ '; staged as NULL', info=true) -%}
    {%- endif -%}
{%- endmacro %}
