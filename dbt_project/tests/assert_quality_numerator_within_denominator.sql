-- Invariants of the quality marts (numerator ⊆ denominator): returns the offending rows.
-- Patient level: a numerator patient is in the denominator and not excluded; a gap is never excluded;
--   for the inverse measure a gap is a numerator patient, for the others a non-numerator one.
-- Aggregates: exclusions <= denominator, numerator <= denominator - exclusions, the rate is in [0, 1],
--   open gaps match the numerator the way the measure's direction says, and each practice row equals the
--   sum of its provider / department rows.
with gaps as (
    select g.*, m.is_inverse
    from {{ ref('quality_care_gaps') }} as g
    inner join {{ ref('measures') }} as m on m.measure_id = g.measure_id
),

patient_level as (
    select
        'care_gaps' as check_scope,
        measure_id,
        patient_id as detail,
        case
            when in_numerator and not in_denominator then 'numerator patient not in the denominator'
            when in_numerator and is_excluded then 'excluded patient counted in the numerator'
            when is_gap and is_excluded then 'excluded patient flagged as a gap'
            when is_gap <> (not is_excluded and (case when is_inverse then in_numerator else not in_numerator end))
                then 'is_gap disagrees with the measure direction'
        end as problem
    from gaps
),

perf as (
    select * from {{ ref('quality_measure_performance') }}
),

aggregate_level as (
    select
        'performance' as check_scope,
        measure_id,
        reporting_level || ' ' || coalesce(cast(provider_id as varchar), '-') || '/'
            || coalesce(cast(department_id as varchar), '-') as detail,
        case
            when exclusions > denominator then 'more exclusions than denominator'
            when numerator > denominator - exclusions then 'numerator larger than denominator - exclusions'
            when initial_population < denominator then 'denominator larger than the initial population'
            when performance_rate < 0 or performance_rate > 1 then 'performance rate outside [0, 1]'
            when open_gaps <> case when is_inverse then numerator else denominator - exclusions - numerator end
                then 'open gaps disagree with the numerator'
        end as problem
    from perf
),

practice_vs_providers as (
    select
        'performance' as check_scope,
        p.measure_id,
        'practice ' || coalesce(cast(p.context_id as varchar), '-') as detail,
        'practice row is not the sum of its provider / department rows' as problem
    from perf as p
    left join (
        select measure_id, context_id, sum(denominator) as denominator, sum(exclusions) as exclusions,
               sum(numerator) as numerator, sum(open_gaps) as open_gaps
        from perf
        where reporting_level = 'provider_department'
        group by measure_id, context_id
    ) as s on s.measure_id = p.measure_id and s.context_id is not distinct from p.context_id
    where p.reporting_level = 'practice'
      and (coalesce(s.denominator, 0) <> p.denominator or coalesce(s.exclusions, 0) <> p.exclusions
           or coalesce(s.numerator, 0) <> p.numerator or coalesce(s.open_gaps, 0) <> p.open_gaps)
)

select * from patient_level where problem is not null
union all
select * from aggregate_level where problem is not null
union all
select * from practice_vs_providers
