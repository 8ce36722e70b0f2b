-- CMS130 numerator: any screening still in its window at the end of the measurement period (MP):
--   fecal occult blood test (FIT/FOBT)  in the MP                      (look-back 0)
--   FIT-DNA                             in the MP or 2 years before    (24 months)
--   CT colonography, flexible sigmoidoscopy  in the MP or 4 years before (48 months)
--   colonoscopy                         in the MP or 9 years before    (108 months)
-- Windows open the look-back before the MP START (the measure_concepts seed's lookback_months) and close
-- at the MP end. Chart procedures and claim lines both count (a colonoscopy only billed still counts).
-- Grain: one row per denominator patient, met or not. Evidence: the qualifying screening that counts the
-- longest (latest expiry); without one, the most recent screening of any kind on record.
-- due_date: for a gap, the period end; when met, the end of the last calendar-year period the
-- screening still counts for (Dec 31 of the year `look-back` months after it).
{% set mp_start = measurement_period_start() %}
{% set mp_end = measurement_period_end() %}
{% set lookbacks = {'fecal_occult_blood_test': 0, 'fit_dna': 24, 'ct_colonography': 48,
                    'flexible_sigmoidoscopy': 48, 'colonoscopy': 108} %}
with denominator as (
    select patient_id, period_end from {{ ref('int_quality__cms130_denominator') }}
),

screenings as (
    select
        s.patient_id,
        s.concept,
        s.code,
        s.performed_date,
        s.source,
        case s.concept
            {%- for concept, months in lookbacks.items() %}
            when '{{ concept }}' then {{ months }}
            {%- endfor %}
        end as lookback_months
    from {{ ref('int_procedures') }} as s
    inner join denominator as d on d.patient_id = s.patient_id
    where s.concept in ({% for concept in lookbacks %}'{{ concept }}'{{ ', ' if not loop.last }}{% endfor %})
      and s.performed_date <= {{ mp_end }}
),

judged as (
    select
        *,
        performed_date >= cast({{ mp_start }} - to_months(lookback_months) as date) as in_window,
        cast(date_trunc('year', performed_date + to_months(lookback_months)) + interval 1 year - interval 1 day
             as date) as counts_until
    from screenings
),

best as (
    select
        patient_id,
        bool_or(in_window) as in_numerator,
        arg_max(concept || ' ' || code || case when source = 'claim' then ' (claim)' else '' end,
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
        when b.patient_id is null then 'No colorectal cancer screening on record'
        when not b.in_numerator then 'Last colorectal screening outside its look-back window'
    end as gap_reason,
    b.evidence_date as last_evidence_date,
    b.evidence as last_evidence_value,
    case when coalesce(b.in_numerator, false) then b.counts_until else d.period_end end as due_date
from denominator as d
left join best as b on b.patient_id = d.patient_id
