-- CMS124 exclusions: a hysterectomy with no residual cervix or an absent cervix (acquired or congenital;
-- procedure or condition) on or before the end of the measurement period (MP), hospice care in the MP or
-- palliative care in the MP. NOT the frailty / advanced-illness exclusion (CMS124 has only hospice and
-- palliative of the shared set). Grain: one row per excluded denominator patient.
{% set mp_end = measurement_period_end() %}
with denominator as (
    select patient_id from {{ ref('int_quality__cms124_denominator') }}
),

no_cervix as (
    select patient_id from {{ ref('int_procedures') }}
    where concept in ('hysterectomy_no_residual_cervix', 'absence_of_cervix') and performed_date <= {{ mp_end }}
    union
    select patient_id from {{ ref('int_conditions') }}
    where concept in ('hysterectomy_no_residual_cervix', 'absence_of_cervix') and onset_date <= {{ mp_end }}
),

flags as (
    select
        d.patient_id,
        x.patient_id is not null as has_no_cervix,
        coalesce(s.is_hospice, false) as is_hospice,
        coalesce(s.is_palliative, false) as is_palliative
    from denominator as d
    left join {{ ref('int_quality__shared_exclusions') }} as s on s.patient_id = d.patient_id
    left join (select distinct patient_id from no_cervix) as x on x.patient_id = d.patient_id
)

select
    patient_id,
    nullif(concat_ws('; ',
        case when has_no_cervix then 'Hysterectomy or absence of cervix' end,
        case when is_hospice then 'Hospice care in the period' end,
        case when is_palliative then 'Palliative care in the period' end), '') as exclusion_reason
from flags
where has_no_cervix or is_hospice or is_palliative
