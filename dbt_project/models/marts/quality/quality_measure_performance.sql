-- quality_measure_performance: eCQM results by measure, measurement period, attributed provider and
-- department, plus one practice-level row per measure (reporting_level 'practice', provider and
-- department NULL) that exists even when nobody is in the denominator.
-- Grain: one row per measure, period, practice (context), reporting level, provider and department.
-- performance_rate = numerator / (denominator - exclusions), NULL when nobody is eligible. For the
-- inverse CMS122 a LOWER rate is better and the open gaps are the numerator (poor control or no test),
-- for every other measure the open gaps are the eligible patients not in the numerator.
with gaps as (
    select * from {{ ref('quality_care_gaps') }}
),

measures as (
    select measure_id, measure_name, is_inverse from {{ ref('measures') }}
),

contexts as (
    select distinct context_id from {{ ref('int_patients') }}
),

by_provider as (
    select
        measure_id,
        period_start,
        period_end,
        context_id,
        'provider_department' as reporting_level,
        provider_id,
        department_id,
        count(*) as initial_population,
        count(*) filter (where in_denominator) as denominator,
        count(*) filter (where in_denominator and is_excluded) as exclusions,
        count(*) filter (where in_denominator and in_numerator) as numerator,
        count(*) filter (where is_gap) as open_gaps
    from gaps
    group by measure_id, period_start, period_end, context_id, provider_id, department_id
),

practice_totals as (
    select
        measure_id,
        context_id,
        count(*) as initial_population,
        count(*) filter (where in_denominator) as denominator,
        count(*) filter (where in_denominator and is_excluded) as exclusions,
        count(*) filter (where in_denominator and in_numerator) as numerator,
        count(*) filter (where is_gap) as open_gaps
    from gaps
    group by measure_id, context_id
),

by_practice as (
    select
        m.measure_id,
        {{ measurement_period_start() }} as period_start,
        {{ measurement_period_end() }} as period_end,
        c.context_id,
        'practice' as reporting_level,
        cast(null as bigint) as provider_id,
        cast(null as bigint) as department_id,
        coalesce(t.initial_population, 0) as initial_population,
        coalesce(t.denominator, 0) as denominator,
        coalesce(t.exclusions, 0) as exclusions,
        coalesce(t.numerator, 0) as numerator,
        coalesce(t.open_gaps, 0) as open_gaps
    from measures as m
    cross join contexts as c
    left join practice_totals as t
        on t.measure_id = m.measure_id and t.context_id is not distinct from c.context_id
),

stacked as (
    select * from by_provider
    union all
    select * from by_practice
)

select
    s.measure_id,
    m.measure_name,
    m.is_inverse,
    s.period_start,
    s.period_end,
    s.context_id,
    s.reporting_level,
    s.provider_id,
    s.department_id,
    s.initial_population,
    s.denominator,
    s.exclusions,
    s.numerator,
    case when s.denominator - s.exclusions > 0
         then cast(s.numerator as double) / (s.denominator - s.exclusions) end as performance_rate,
    s.open_gaps
from stacked as s
inner join measures as m on m.measure_id = s.measure_id
