-- CMS124 numerator: cervical cytology in the measurement period (MP) or the 2 years before, done at age
-- >= 21, OR a high-risk HPV test in the MP or the 4 years before, done at age >= 30. Windows open the
-- look-back before the MP START and close at the MP end.
-- Grain: one row per denominator patient, met or not. Evidence: the qualifying test that counts the
-- longest; without one, the most recent test on record.
-- due_date: for a gap, the period end; when met, the end of the last calendar-year period the test still
-- counts for (Dec 31 two years after a cytology, four years after an HPV test).
{% set mp_start = measurement_period_start() %}
{% set mp_end = measurement_period_end() %}
with denominator as (
    select patient_id, birth_date, period_end from {{ ref('int_quality__cms124_denominator') }}
),

tests as (
    select
        t.patient_id,
        t.concept,
        t.code,
        t.performed_date,
        case t.concept when 'cervical_cytology' then 24 else 48 end as lookback_months,
        case t.concept when 'cervical_cytology' then 21 else 30 end as min_age,
        d.birth_date
    from {{ ref('int_procedures') }} as t
    inner join denominator as d on d.patient_id = t.patient_id
    where t.concept in ('cervical_cytology', 'hpv_test')
      and t.performed_date <= {{ mp_end }}
),

judged as (
    select
        *,
        performed_date >= cast({{ mp_start }} - to_months(lookback_months) as date)
            and performed_date >= cast(birth_date + to_years(min_age) as date) as in_window,
        cast(date_trunc('year', performed_date + to_months(lookback_months)) + interval 1 year - interval 1 day
             as date) as counts_until
    from tests
),

best as (
    select
        patient_id,
        bool_or(in_window) as in_numerator,
        arg_max(concept || ' ' || code,
                [case when in_window then 1 else 0 end, epoch(counts_until), epoch(performed_date)]) as evidence,
        arg_max(performed_date,
                [case when in_window then 1 else 0 end, epoch(counts_until), epoch(performed_date)]) as evidence_date,
        max(counts_until) filter (where in_window) as counts_until
    from judged
    group by patient_id
)

select
    d.patient_id,
    coalesce(b.in_numerator, false) as in_numerator,
    case
        when b.patient_id is null then 'No cervical cytology or HPV test on record'
        when not b.in_numerator then 'Last cervical screening outside its look-back window (or too young at the test)'
    end as gap_reason,
    b.evidence_date as last_evidence_date,
    b.evidence as last_evidence_value,
    case when coalesce(b.in_numerator, false) then b.counts_until else d.period_end end as due_date
from denominator as d
left join best as b on b.patient_id = d.patient_id
