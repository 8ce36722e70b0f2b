{#-
  Helpers for flattening raw FHIR R4 resources (JSON) with DuckDB's JSON functions.

  The raw layer (athena_pipeline/warehouse/fhir_loader.py) keeps one row per resource in
  raw_fhir.<type lower-case>: id, last_updated, resource (JSON), export_id, source_file,
  source_line, loaded_at. Staging models read it through `fhir_source()`.
-#}

{#- The raw FHIR table's columns and types, for the empty stand-in of a missing table. -#}
{% macro fhir_raw_columns() -%}
    {{ return([('id', 'varchar'), ('last_updated', 'timestamptz'), ('resource', 'json'),
               ('export_id', 'varchar'), ('source_file', 'varchar'), ('source_line', 'bigint'),
               ('loaded_at', 'timestamptz')]) }}
{%- endmacro %}


{#- raw_fhir.<table_name>, or zero rows of the same shape when this warehouse never loaded that type. -#}
{% macro fhir_source(table_name) -%}
    {{ return(source_or_empty('raw_fhir', table_name, fhir_raw_columns())) }}
{%- endmacro %}


{#-
  Parse each resource ONCE. DuckDB re-parses the JSON text for every `->>` / json_extract call, so a
  model reading 20 elements would parse every resource 20 times; one multi-path json_extract parses
  it once (about 5x faster on Observation). `fields` is a list of (name, JSON path, kind):
    'text'  the value as text (strings unquoted, numbers and booleans as written, NULL when absent)
    'json'  the value as JSON (objects, for further ->> on a small fragment)
    'list'  a JSON array as a DuckDB list of JSON elements (for list_filter / unnest / [1])
  Paths cannot contain wildcards (DuckDB refuses them with several paths): take the array with
  'list' and go on from there.
  Use: `{{ fhir_parse(fields) }} as _f` in one CTE, then `{{ fhir_fields(fields) }}` over it.
-#}
{% macro fhir_parse(fields, column='resource') -%}
    json_extract({{ column }}, [{%- for field in fields %}'{{ field[1] }}'{{ ', ' if not loop.last }}{% endfor -%}])
{%- endmacro %}


{% macro fhir_fields(fields, parsed='_f') -%}
    {%- for field in fields %}
        {% if field[2] == 'text' -%}
            ({{ parsed }}[{{ loop.index }}] ->> '$')
        {%- elif field[2] == 'list' -%}
            json_extract({{ parsed }}[{{ loop.index }}], '$[*]')
        {%- elif field[2] == 'json' -%}
            {{ parsed }}[{{ loop.index }}]
        {%- else -%}
            {{ exceptions.raise_compiler_error("fhir_fields: kind of " ~ field[0] ~ " must be text, json or list") }}
        {%- endif %} as {{ field[0] }}{{ ',' if not loop.last }}
    {%- endfor %}
{%- endmacro %}


{#-
  A FHIR dateTime/instant (text) as a naive UTC TIMESTAMP, the convention of the whole warehouse.
  Partial dates (YYYY, YYYY-MM) become the start of the period; a date without time is midnight;
  a time with a zone offset (or Z) is converted to UTC; a time without zone (not valid FHIR, but
  seen) is taken as UTC. Unparseable text becomes NULL rather than failing the build.
-#}
{% macro fhir_timestamp(expr) -%}
    (case
        when {{ expr }} is null then null
        when length({{ expr }}) = 4 then try_cast({{ expr }} || '-01-01' as timestamp)
        when length({{ expr }}) = 7 then try_cast({{ expr }} || '-01' as timestamp)
        when length({{ expr }}) = 10 then try_cast({{ expr }} as timestamp)
        when regexp_matches({{ expr }}, '(Z|[+-][0-9][0-9]:?[0-9][0-9])$')
            then timezone('UTC', try_cast({{ expr }} as timestamptz))
        else try_cast({{ expr }} as timestamp)
    end)
{%- endmacro %}


{#-
  The calendar date a FHIR date/dateTime was recorded on, in the zone it was recorded in (the
  clinically meaningful date: a 23:30-05:00 visit happened that day, not the next UTC day).
  Partial dates become the first day of the period.
-#}
{% macro fhir_date(expr) -%}
    (case
        when {{ expr }} is null then null
        when length({{ expr }}) = 4 then try_cast({{ expr }} || '-01-01' as date)
        when length({{ expr }}) = 7 then try_cast({{ expr }} || '-01' as date)
        else try_cast(left({{ expr }}, 10) as date)
    end)
{%- endmacro %}


{#- A raw TIMESTAMPTZ column as naive UTC (the warehouse convention; Data View timestamps are NTZ UTC). -#}
{% macro utc_timestamp(expr) -%}
    timezone('UTC', {{ expr }})
{%- endmacro %}


{#-
  References. FHIR writes them several ways and staging splits each into type + id:
    Patient/a-195900.E-17                        -> Patient, a-195900.E-17   (relative)
    https://fhir.example.org/r4/Patient/123/_history/2 -> Patient, 123     (absolute URL, versioned)
    urn:uuid:1f3c...                             -> (type unknown), 1f3c...  (Synthea bundles)
    Practitioner?identifier=<system>|<value>     -> Practitioner, no id      (conditional, Synthea)
    #med1                                        -> no type, no id           (contained resource)
-#}
{% macro _fhir_ref_pattern() -%}
    {{ return("(?:^|/)([A-Z][A-Za-z]+)/([A-Za-z0-9.-]{1,64})(?:/_history/[^/]+)?$") }}
{%- endmacro %}


{% macro fhir_ref_type(ref) -%}
    (case
        when {{ ref }} is null or {{ ref }} like 'urn:%' or {{ ref }} like '#%' then null
        when regexp_matches({{ ref }}, '^(?:[^?]*/)?[A-Z][A-Za-z]+[?]')
            then regexp_extract({{ ref }}, '^(?:[^?]*/)?([A-Z][A-Za-z]+)[?]', 1)
        else nullif(regexp_extract({{ ref }}, '{{ _fhir_ref_pattern() }}', 1), '')
    end)
{%- endmacro %}


{#-
  The id a reference points to. With `resource_type`, only references to that type give an id
  (so `subject` pointing at a Group does not become a patient_id); `urn:uuid:`/`urn:oid:`
  references carry no type and are trusted to be of the expected type.
-#}
{% macro fhir_ref_id(ref, resource_type=none) -%}
    (case
        when {{ ref }} is null then null
        when {{ ref }} like 'urn:uuid:%' then substr({{ ref }}, 10)
        when {{ ref }} like 'urn:oid:%' then substr({{ ref }}, 9)
        {%- if resource_type %}
        when regexp_extract({{ ref }}, '{{ _fhir_ref_pattern() }}', 1) <> '{{ resource_type }}' then null
        {%- endif %}
        else nullif(regexp_extract({{ ref }}, '{{ _fhir_ref_pattern() }}', 2), '')
    end)
{%- endmacro %}


{#- The identifier value of a conditional reference (`Practitioner?identifier=<system>|<value>`), if it uses `system`. -#}
{% macro fhir_ref_identifier(ref, system) -%}
    (case when starts_with(split_part({{ ref }}, '?identifier=', 2), '{{ system }}|')
          then nullif(regexp_extract({{ ref }}, '[|]([^&|]+)$', 1), '') end)
{%- endmacro %}


{#- A coding system URI (or OID) as the short names the value-set seeds use. NULL when not one of them. -#}
{% macro fhir_code_system(system) -%}
    (case lower({{ system }})
        when 'http://hl7.org/fhir/sid/icd-10-cm' then 'icd-10-cm'
        when 'urn:oid:2.16.840.1.113883.6.90' then 'icd-10-cm'
        when 'http://hl7.org/fhir/sid/icd-10' then 'icd-10'
        when 'http://snomed.info/sct' then 'snomed-ct'
        when 'urn:oid:2.16.840.1.113883.6.96' then 'snomed-ct'
        when 'http://loinc.org' then 'loinc'
        when 'urn:oid:2.16.840.1.113883.6.1' then 'loinc'
        when 'http://www.ama-assn.org/go/cpt' then 'cpt'
        when 'urn:oid:2.16.840.1.113883.6.12' then 'cpt'
        when 'https://www.cms.gov/medicare/coding/hcpcsreleasecodesets' then 'hcpcs'
        when 'http://www.cms.gov/medicare/coding/hcpcsreleasecodesets' then 'hcpcs'
        when 'urn:oid:2.16.840.1.113883.6.285' then 'hcpcs'
        when 'http://hl7.org/fhir/sid/cvx' then 'cvx'
        when 'urn:oid:2.16.840.1.113883.12.292' then 'cvx'
        when 'http://www.nlm.nih.gov/research/umls/rxnorm' then 'rxnorm'
        when 'urn:oid:2.16.840.1.113883.6.88' then 'rxnorm'
        when 'http://hl7.org/fhir/sid/ndc' then 'ndc'
        else null
    end)
{%- endmacro %}


{#-
  The first coding, among the JSON list `codings` (e.g. a 'list' field of '$.code.coding'),
  whose system normalises to one of `code_systems` (e.g. ['icd-10-cm']), as a JSON object; follow
  with ->> 'code' / ->> 'display'. Exporters put several codings on one concept (Synthea: SNOMED
  and ICD-10; athenahealth: ICD-10 and SNOMED), in no promised order, so pick by system.
-#}
{% macro fhir_coding_in(codings, code_systems) -%}
    list_filter({{ codings }},
                lambda c: {{ fhir_code_system("(c ->> 'system')") }} in ('{{ code_systems | join("', '") }}'))[1]
{%- endmacro %}


{#-
  One row per coding of one or more CodeableConcept elements of a resource.
  `relation` must have `<id_column>`, `patient_id` and the `extra_columns` (copied to every row,
  after the coding's columns); `elements` is a list of
  (element name, SQL expression over alias `r` giving the JSON list of codings), e.g. with a
  'json' field `code` of '$.code': ('code', "json_extract(r.code, '$.coding[*]')"), or for a
  repeating element (field `types` of '$.type'): ('type', "json_extract(r.types, '$[*].coding[*]')").
-#}
{% macro fhir_codings(relation, id_column, elements, extra_columns=[]) -%}
    {%- for element in elements %}
    select
        r.{{ id_column }},
        r.patient_id,
        '{{ element[0] }}' as element,
        cast(c.coding_index as integer) as coding_index,
        c.coding ->> 'system' as system,
        {{ fhir_code_system("(c.coding ->> 'system')") }} as code_system,
        c.coding ->> 'code' as code,
        c.coding ->> 'display' as display
        {%- for column in extra_columns %},
        r.{{ column }}
        {%- endfor %}
    from {{ relation }} as r,
        unnest({{ element[1] }}) with ordinality as c(coding, coding_index)
    {%- if not loop.last %}
    union all
    {%- endif %}
    {%- endfor %}
{%- endmacro %}


{#- A whole `stg_fhir__<x>_codings` model: parse `fields` (the first is the patient reference) from
    raw_fhir.<table>, then one row per coding of each element in `elements`, with the raw version's
    `loaded_at` (what incremental builds go by: macros/staging/incremental.sql). -#}
{% macro fhir_codings_model(table, id_column, fields, elements) -%}
with source as (
    select * from {{ fhir_incremental_source(table) }}
),

{#- materialized: the codings CTE reads this twice (one branch per element) and DuckDB's plan for
    each unnest reads it twice more; without it every resource's JSON is parsed four times (3x slower
    on Observation). -#}
parsed as materialized (
    select id, loaded_at, {{ fhir_parse(fields) }} as _f
    from source
),

extracted as (
    select
        id as {{ id_column }},
        {{ fhir_ref_id("(_f[1] ->> '$')", 'Patient') }} as patient_id,
        {{ utc_timestamp('loaded_at') }} as loaded_at,
        {{ fhir_fields(fields) }}
    from parsed
),

codings as (
    {{ fhir_codings('extracted', id_column, elements, extra_columns=['loaded_at']) }}
)

select * from codings
{%- endmacro %}
