-- CMS117 numerator evaluation: for every denominator child, the completed doses of each vaccine
-- series given on or before the 2nd birthday (a dose = a distinct date, so same-day duplicates count
-- once) against the required count in seeds/measure_concepts.csv (role 'numerator', required_count).
-- Grain: one row per denominator patient (met or not), with the evidence that decides it.
with required as (
    -- value-set concept of each series -> the vaccine_group int_immunizations carries
    select
        g.vaccine_group,
        g.sort_order,
        cast(mc.required_count as integer) as required_doses
    from (
        values
            ('dtap_vaccine', 'DTaP', 1), ('ipv_vaccine', 'IPV', 2), ('mmr_vaccine', 'MMR', 3),
            ('hib_vaccine', 'Hib', 4), ('hepatitis_b_vaccine', 'HepB', 5), ('varicella_vaccine', 'VZV', 6),
            ('pneumococcal_conjugate_vaccine', 'PCV', 7), ('hepatitis_a_vaccine', 'HepA', 8),
            ('rotavirus_vaccine', 'RV', 9), ('influenza_vaccine', 'Influenza', 10)
    ) as g (concept, vaccine_group, sort_order)
    inner join {{ ref('measure_concepts') }} as mc
        on mc.measure_id = 'CMS117' and mc.role = 'numerator' and mc.concept = g.concept
),

denominator as (
    select patient_id, second_birthday
    from {{ ref('int_quality__cms117_denominator') }}
),

doses as (
    select distinct
        i.patient_id,
        i.vaccine_group,
        i.occurrence_date
    from {{ ref('int_immunizations') }} as i
    inner join denominator as d on d.patient_id = i.patient_id
    where i.status = 'completed'
      and i.occurrence_date <= d.second_birthday
),

series as (
    select
        d.patient_id,
        d.second_birthday,
        r.vaccine_group,
        r.sort_order,
        r.required_doses,
        count(x.occurrence_date) as doses_given,
        max(x.occurrence_date) as last_dose_date
    from denominator as d
    cross join required as r
    left join doses as x on x.patient_id = d.patient_id and x.vaccine_group = r.vaccine_group
    group by all
)

select
    patient_id,
    bool_and(doses_given >= required_doses) as in_numerator,
    count(*) filter (where doses_given < required_doses) as incomplete_series,
    case when bool_or(doses_given < required_doses) then
        'Missing by the 2nd birthday: '
        || string_agg(vaccine_group || ' ' || doses_given || '/' || required_doses, ', ' order by sort_order)
            filter (where doses_given < required_doses)
    end as gap_reason,
    max(last_dose_date) as last_evidence_date,
    string_agg(vaccine_group || ' ' || doses_given || '/' || required_doses, ', ' order by sort_order)
        as last_evidence_value,
    any_value(second_birthday) as due_date
from series
group by patient_id
