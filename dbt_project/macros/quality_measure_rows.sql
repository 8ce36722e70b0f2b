{#-
  The combined row of one quality measure: one row per denominator patient, in the shape every
  int_quality__cms* model shares (quality_care_gaps unions them). It joins the measure's
  _denominator, _exclusions and _numerator models (Tuva style: each step is its own model).

  measure           'cms124' -> ref('int_quality__cms124_denominator') etc.
  inverse           true for inverse measures (CMS122): the care gap is numerator = 1
  due_date_for_met  true: a patient who meets a look-back measure keeps the due date of the
                    evidence's expiry; false: due_date only on open gaps
-#}
{% macro quality_measure_rows(measure, inverse=false, due_date_for_met=true) -%}
{%- set gap = ('numerator_met' if inverse else 'not numerator_met') ~ ' and not is_excluded' -%}
with denominator as (
    select * from {{ ref('int_quality__' ~ measure ~ '_denominator') }}
),

exclusions as (
    select * from {{ ref('int_quality__' ~ measure ~ '_exclusions') }}
),

numerator as (
    select * from {{ ref('int_quality__' ~ measure ~ '_numerator') }}
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
    {{ gap }} as is_gap,
    case when {{ gap }} then gap_reason end as gap_reason,
    last_evidence_date,
    cast(last_evidence_value as varchar) as last_evidence_value,
    case when {{ 'not is_excluded' if due_date_for_met else gap }} then due_date end as due_date
from joined
{%- endmacro %}
