-- CMS165 exclusions: the shared set, plus end-stage renal disease or a kidney transplant (condition) or
-- dialysis (procedure) on or before the end of the measurement period (MP), a pregnancy overlapping the
-- MP, and age >= 81 with frailty in the MP (frailty alone, CMS165 only).
-- Grain: one row per excluded denominator patient; exclusion_reason lists every reason that applies.
-- Kidney transplant is in the real eCQM but not in the sandbox ground truth (which plants none).
{% set mp_start = measurement_period_start() %}
{% set mp_end = measurement_period_end() %}
with denominator as (
    select patient_id, age_at_period_end from {{ ref('int_quality__cms165_denominator') }}
),

conditions as (
    select
        patient_id,
        bool_or(concept in ('end_stage_renal_disease', 'kidney_transplant') and onset_date <= {{ mp_end }}) as has_esrd,
        bool_or(concept = 'pregnancy' and onset_date <= {{ mp_end }}
                and coalesce(abatement_date, date '9999-12-31') >= {{ mp_start }}) as is_pregnant
    from {{ ref('int_conditions') }}
    where concept in ('end_stage_renal_disease', 'kidney_transplant', 'pregnancy')
    group by patient_id
),

dialysis as (
    select patient_id, true as has_dialysis
    from {{ ref('int_procedures') }}
    where concept in ('dialysis_services', 'kidney_transplant') and performed_date <= {{ mp_end }}
    group by patient_id
),

flags as (
    select
        d.patient_id,
        s.exclusion_reason as shared_reason,
        coalesce(c.has_esrd, false) or coalesce(x.has_dialysis, false) as is_esrd,
        coalesce(c.is_pregnant, false) as is_pregnant,
        coalesce(d.age_at_period_end >= 81, false) and coalesce(s.has_frailty, false) as is_frail_81
    from denominator as d
    left join {{ ref('int_quality__shared_exclusions') }} as s on s.patient_id = d.patient_id
    left join conditions as c on c.patient_id = d.patient_id
    left join dialysis as x on x.patient_id = d.patient_id
)

select
    patient_id,
    nullif(concat_ws('; ',
        shared_reason,
        case when is_esrd then 'End-stage renal disease, dialysis or kidney transplant' end,
        case when is_pregnant then 'Pregnancy during the period' end,
        case when is_frail_81 then 'Age 81+ with frailty' end), '') as exclusion_reason
from flags
where shared_reason is not null or is_esrd or is_pregnant or is_frail_81
