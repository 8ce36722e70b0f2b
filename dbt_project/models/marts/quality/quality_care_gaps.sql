-- quality_care_gaps: every patient in the denominator of every implemented eCQM for the measurement
-- period, with the attributed provider / department, exclusion, numerator, care-gap flag and the
-- evidence behind it. Patient-level (PHI). Grain: one row per measure, period and patient.
-- The per-measure logic lives in intermediate/quality/int_quality__<measure>.sql (one model per
-- measure, all in the same column shape); this mart only stacks them and adds the attribution.
{% set measure_models = [
    'int_quality__cms122', 'int_quality__cms165', 'int_quality__cms125', 'int_quality__cms130',
    'int_quality__cms124', 'int_quality__cms117', 'int_quality__cms2', 'int_quality__cms138',
    'int_quality__cms69',
] %}
with measures as (
    {%- for model_name in measure_models %}
    select
        measure_id, period_start, period_end, patient_id, in_denominator, is_excluded, exclusion_reason,
        in_numerator, is_gap, gap_reason, last_evidence_date, last_evidence_value, due_date
    from {{ ref(model_name) }}
    {%- if not loop.last %}
    union all
    {%- endif %}
    {%- endfor %}
)

select
    m.measure_id,
    m.period_start,
    m.period_end,
    m.patient_id,
    p.context_id,
    p.provider_id,
    p.department_id,
    m.in_denominator,
    m.is_excluded,
    m.exclusion_reason,
    m.in_numerator,
    m.is_gap,
    m.gap_reason,
    m.last_evidence_date,
    m.last_evidence_value,
    m.due_date
from measures as m
left join {{ ref('int_patients') }} as p on p.patient_id = m.patient_id
