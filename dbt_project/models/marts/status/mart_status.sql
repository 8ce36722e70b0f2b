-- mart_status: one row per mart, saying which day its numbers are as of and how many rows it holds.
-- Why a table of its own: as_of_date is the same on every row of a mart and new every day; published
-- per row it would make every nightly Caspio publish rewrite every row of every table (thousands of
-- calls for a handful of changed numbers). Dashboards read "data as of" here instead: one row per
-- table, updated when its date or size moves. It depends on every mart, so it is built after them.
-- Marts with an as_of_date column report their own; the quality marts (whose rows carry their
-- measurement period instead) report the run's as_of_date var.
{%- set marts = [
    ('quality_care_gaps', 'quality', false),
    ('quality_measure_performance', 'quality', false),
    ('denials_by_payer_month', 'denials', true),
    ('denial_reasons', 'denials', true),
    ('ar_aging', 'revenue_cycle', true),
    ('revenue_cycle_kpis', 'revenue_cycle', true),
    ('appointment_utilization', 'operations', true),
] %}

{% for mart, area, has_as_of in marts %}
select
    '{{ mart }}' as mart,
    '{{ area }}' as subject_area,
    {% if has_as_of -%}
    coalesce(max(as_of_date), {{ as_of_date() }}) as as_of_date,
    cast(null as date) as measurement_period_start,
    cast(null as date) as measurement_period_end,
    {%- else -%}
    {{ as_of_date() }} as as_of_date,
    min(period_start) as measurement_period_start,
    max(period_end) as measurement_period_end,
    {%- endif %}
    count(*) as row_count
from {{ ref(mart) }}
{% if not loop.last %}union all{% endif %}
{% endfor %}
