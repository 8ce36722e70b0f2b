{#-
  The numerator of a look-back screening measure (CMS124, CMS125, CMS130): the patient is met when some
  evidence (a test, a procedure) is still within its look-back window at the end of the measurement
  period (MP). A window opens `lookback_months` before the MP START and closes at the MP end.
  Grain: one row per denominator patient, met or not, in the shape quality_measure_rows() reads.

  measure           'cms124' -> ref('int_quality__cms124_denominator')
  evidence          SQL select, one row per piece of evidence dated on or before the MP end:
                      patient_id, performed_date,
                      lookback_months  how long it counts (0: only in the MP)
                      label            what it was, shown as last_evidence_value
                    plus any column `eligible` reads. It may join `denominator` (the measure's
                    denominator model, every column) to keep to denominator patients.
  no_evidence_reason / outside_window_reason
                    gap_reason without any evidence / when the latest is out of its window
  eligible          optional SQL predicate over the evidence columns that must also hold for the
                    evidence to count (CMS124: the patient's age at the test)

  Evidence shown: the qualifying piece that counts the longest (latest expiry); without one, the most
  recent of any kind. due_date: for a gap, the period end; when met, the end of the last calendar-year
  period the evidence still counts for (Dec 31 of the year `lookback_months` after it).
-#}
{% macro quality_lookback_numerator(measure, evidence, no_evidence_reason, outside_window_reason,
                                    eligible=none) -%}
{%- set rank = "[case when in_window then 1 else 0 end, epoch(counts_until), epoch(performed_date)]" -%}
with denominator as (
    select * from {{ ref('int_quality__' ~ measure ~ '_denominator') }}
),

evidence as (
    {{ evidence | trim | indent(4) }}
),

judged as (
    select
        *,
        performed_date >= cast({{ measurement_period_start() }} - to_months(lookback_months) as date)
            {%- if eligible is not none %} and {{ eligible }}{% endif %} as in_window,
        cast(date_trunc('year', performed_date + to_months(lookback_months)) + interval 1 year - interval 1 day
             as date) as counts_until
    from evidence
),

best as (
    select
        patient_id,
        bool_or(in_window) as in_numerator,
        arg_max(label, {{ rank }}) as evidence,
        arg_max(performed_date, {{ rank }}) as evidence_date,
        max(counts_until) filter (where in_window) as counts_until
    from judged
    group by patient_id
)

select
    d.patient_id,
    coalesce(b.in_numerator, false) as in_numerator,
    case
        when b.patient_id is null then '{{ no_evidence_reason | replace("'", "''") }}'
        when not b.in_numerator then '{{ outside_window_reason | replace("'", "''") }}'
    end as gap_reason,
    b.evidence_date as last_evidence_date,
    b.evidence as last_evidence_value,
    case when coalesce(b.in_numerator, false) then b.counts_until else d.period_end end as due_date
from denominator as d
left join best as b on b.patient_id = d.patient_id
{%- endmacro %}
