-- CMS125 exclusions: the shared set, plus a bilateral mastectomy on or before the end of the measurement
-- period: a history of bilateral mastectomy (condition Z90.13 or a bilateral mastectomy procedure), OR
-- absence of BOTH the right and the left breast (Z90.11 + Z90.12), OR two unilateral mastectomies on
-- different dates. Grain: one row per excluded denominator patient.
-- The ground truth counts only the conditions; the procedure rules are the real eCQM's and never fire on
-- a sandbox world (it plants one mastectomy procedure per patient, with the Z90.13 condition).
{% set mp_end = measurement_period_end() %}
with denominator as (
    select patient_id from {{ ref('int_quality__cms125_denominator') }}
),

conditions as (
    select
        patient_id,
        bool_or(concept = 'history_of_bilateral_mastectomy') as has_bilateral,
        bool_or(concept = 'absence_of_right_breast') as has_right_absent,
        bool_or(concept = 'absence_of_left_breast') as has_left_absent
    from {{ ref('int_conditions') }}
    where concept in ('history_of_bilateral_mastectomy', 'absence_of_right_breast', 'absence_of_left_breast')
      and onset_date <= {{ mp_end }}
    group by patient_id
),

procedures as (
    select
        patient_id,
        bool_or(concept = 'history_of_bilateral_mastectomy') as has_bilateral_procedure,
        count(distinct performed_date) filter (where concept = 'unilateral_mastectomy') as unilateral_dates
    from {{ ref('int_procedures') }}
    where concept in ('history_of_bilateral_mastectomy', 'unilateral_mastectomy')
      and performed_date <= {{ mp_end }}
    group by patient_id
),

flags as (
    select
        d.patient_id,
        s.exclusion_reason as shared_reason,
        coalesce(c.has_bilateral, false) or coalesce(r.has_bilateral_procedure, false) as is_bilateral,
        coalesce(c.has_right_absent and c.has_left_absent, false) as is_right_and_left,
        coalesce(r.unilateral_dates >= 2, false) as is_two_unilateral
    from denominator as d
    left join {{ ref('int_quality__shared_exclusions') }} as s on s.patient_id = d.patient_id
    left join conditions as c on c.patient_id = d.patient_id
    left join procedures as r on r.patient_id = d.patient_id
)

select
    patient_id,
    nullif(concat_ws('; ',
        shared_reason,
        case when is_bilateral then 'Bilateral mastectomy' end,
        case when is_right_and_left then 'Absence of right and left breast' end,
        case when is_two_unilateral then 'Two unilateral mastectomies' end), '') as exclusion_reason
from flags
where shared_reason is not null or is_bilateral or is_right_and_left or is_two_unilateral
