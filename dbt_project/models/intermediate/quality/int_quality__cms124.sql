-- CMS124 (Cervical cancer screening), one row per denominator patient, in the shape every int_quality__cms*
-- model shares (the quality marts union them). The care gap is a denominator patient, not excluded,
-- who does not meet the numerator; due_date is the period end for a gap and, for a patient who meets
-- it, the day the evidence stops counting (see the numerator model).
with denominator as (
    select * from {{ ref('int_quality__cms124_denominator') }}
),

exclusions as (
    select * from {{ ref('int_quality__cms124_exclusions') }}
),

numerator as (
    select * from {{ ref('int_quality__cms124_numerator') }}
),

joined as (
    select
        d.measure_id,
        d.period_start,
        d.period_end,
        d.patient_id,
        e.patient_id is not null as is_excluded,
        e.exclusion_reason,
        coalesce(n.in_numerator, false) as numerator_met,
        n.gap_reason,
        n.last_evidence_date,
        n.last_evidence_value,
        n.due_date
    from denominator as d
    left join exclusions as e on e.patient_id = d.patient_id
    left join numerator as n on n.patient_id = d.patient_id
)

select
    measure_id,
    period_start,
    period_end,
    patient_id,
    true as in_denominator,
    is_excluded,
    exclusion_reason,
    numerator_met and not is_excluded as in_numerator,
    not numerator_met and not is_excluded as is_gap,
    case when not numerator_met and not is_excluded then gap_reason end as gap_reason,
    last_evidence_date,
    cast(last_evidence_value as varchar) as last_evidence_value,
    case when not is_excluded then due_date end as due_date
from joined
