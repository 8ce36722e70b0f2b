{#-
  Incremental FHIR staging: re-stage only the resources the last load wrote.

  Why: flattening FHIR JSON is most of a full `dbt build` (Observation alone is three models over
  ~0.7 M resources on a 15-provider practice), while a nightly `_since` export changes a few thousand
  resources. Each FHIR staging table of patient data is therefore an incremental model:

    config(materialized='incremental', unique_key='<id column>', incremental_strategy='delete+insert',
           on_schema_change='fail', post_hook="{{ fhir_incremental_prune('<table>', '<id column>') }}")
    ... from {{ fhir_incremental_source('<table>') }}

  and every such model carries `loaded_at`: when the loader wrote the raw version it was staged from.

  * Which rows: on an incremental run, the raw rows whose `loaded_at` is newer than the newest
    `loaded_at` the model holds. The loader stamps `loaded_at = now()` on every row it inserts or
    replaces (unchanged copies keep their stamp), one export per transaction, and DuckDB lets one
    process write the file at a time, so a load is either wholly older than what the model saw or
    wholly newer: `>` misses nothing and re-reads nothing.
  * Updates: delete+insert on the resource id replaces every staged row of a re-loaded resource
    (for the *_codings and components models, all its rows: a resource that now has fewer codings
    loses the others).
  * Deletes: the loader removes a deleted resource's raw row (FHIR deletions are hard deletes), so
    the batch cannot carry them. The post-hook removes every staged row whose (id, loaded_at) is no
    longer a raw version: deleted resources, and rows of a re-loaded resource that has no rows in
    the new batch at all (e.g. its last coding removed). An id anti-join, no JSON parsing.
  * What dbt alone does not notice: a change of the staging SQL or of a macro it uses (rows staged
    before keep the old logic). The Dagster step does: it records a fingerprint of each incremental
    model's logic and runs `--full-refresh` when it changed (athena_pipeline/defs/transform/
    incremental.py). Running dbt by hand, rebuild with `dbt build --full-refresh` after such a
    change. A new or dropped column stops the run (`on_schema_change='fail'`) rather than leaving
    it half filled.
-#}

{#- The raw FHIR rows to stage: all of them on a full build, those loaded since the last run otherwise. -#}
{% macro fhir_incremental_source(table_name) -%}
    {%- set relation = fhir_source(table_name) -%}
    {%- if is_incremental() -%}
        {{ return('(select * from ' ~ relation ~ ' as raw where ' ~ utc_timestamp('raw.loaded_at')
                  ~ ' > (select coalesce(max(loaded_at), timestamp \'-infinity\') from ' ~ this ~ '))') }}
    {%- endif -%}
    {{ return(relation) }}
{%- endmacro %}


{#- Post-hook: delete staged rows whose raw version is gone (deleted or superseded; see above). -#}
{% macro fhir_incremental_prune(table_name, id_column) -%}
    {%- if is_incremental() -%}
delete from {{ this }} as staged
where not exists (
    select 1 from {{ fhir_source(table_name) }} as raw
    where raw.id = staged.{{ id_column }} and {{ utc_timestamp('raw.loaded_at') }} = staged.loaded_at
)
    {%- endif -%}
{%- endmacro %}
