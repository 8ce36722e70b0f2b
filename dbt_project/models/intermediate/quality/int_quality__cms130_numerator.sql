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
{% set lookbacks = {'fecal_occult_blood_test': 0, 'fit_dna': 24, 'ct_colonography': 48,
                    'flexible_sigmoidoscopy': 48, 'colonoscopy': 108} %}
{% set screenings %}
select
    s.patient_id,
    s.performed_date,
    case s.concept
        {%- for concept, months in lookbacks.items() %}
        when '{{ concept }}' then {{ months }}
        {%- endfor %}
    end as lookback_months,
    s.concept || ' ' || s.code || case when s.source = 'claim' then ' (claim)' else '' end as label
from {{ ref('int_procedures') }} as s
inner join denominator as d on d.patient_id = s.patient_id
where s.concept in ({% for concept in lookbacks %}'{{ concept }}'{{ ', ' if not loop.last }}{% endfor %})
  and s.performed_date <= {{ measurement_period_end() }}
{% endset %}
{{ quality_lookback_numerator(
    'cms130', screenings,
    no_evidence_reason='No colorectal cancer screening on record',
    outside_window_reason='Last colorectal screening outside its look-back window') }}
