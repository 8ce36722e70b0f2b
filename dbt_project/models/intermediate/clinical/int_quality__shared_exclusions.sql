-- int_quality__shared_exclusions: the exclusions most eCQMs share (metrics.md §3.1), per patient, as
-- the sandbox ground truth ("shared_exclusions") counts them. Grain: one row per patient in
-- int_patients (flags all false when nothing applies).
--   is_hospice   a hospice_care procedure performed in the measurement period (MP);
--   is_palliative a palliative_care condition with onset in the MP;
--   is_frail_advanced_illness  age >= 66 at MP end, a frailty condition with onset in the MP, AND
--                (an advanced_illness condition with onset on or before MP end that was not resolved
--                before Jan 1 of the prior year, OR a dementia_medication ordered on or before MP end).
-- Simplifications of the real eCQM, following the ground truth: no long-term-care (nursing home)
-- criterion; one frailty indication suffices; advanced illness needs no encounter count; the
-- dementia medication has no look-back floor (measure_concepts says 12 months; the ground truth
-- counts any order on or before MP end).
{% set mp_start = measurement_period_start() %}
{% set mp_end = measurement_period_end() %}
with patients as (
    select patient_id, age_at_period_end from {{ ref('int_patients') }}
),

conditions as (
    select
        patient_id,
        bool_or(concept = 'palliative_care' and onset_date between {{ mp_start }} and {{ mp_end }}) as is_palliative,
        bool_or(concept = 'frailty' and onset_date between {{ mp_start }} and {{ mp_end }}) as has_frailty,
        bool_or(concept = 'advanced_illness' and onset_date <= {{ mp_end }}
                and (abatement_date is null
                     or abatement_date >= cast({{ mp_start }} - interval 1 year as date))) as has_advanced_illness
    from {{ ref('int_conditions') }}
    where concept in ('palliative_care', 'frailty', 'advanced_illness')
    group by patient_id
),

procedures as (
    select patient_id, true as is_hospice
    from {{ ref('int_procedures') }}
    where concept = 'hospice_care' and performed_date between {{ mp_start }} and {{ mp_end }}
    group by patient_id
),

medications as (
    select patient_id, true as has_dementia_medication
    from {{ ref('int_medications') }}
    where concept = 'dementia_medication' and authored_on <= {{ mp_end }}
    group by patient_id
),

flags as (
    select
        p.patient_id,
        p.age_at_period_end,
        coalesce(r.is_hospice, false) as is_hospice,
        coalesce(c.is_palliative, false) as is_palliative,
        coalesce(c.has_frailty, false) as has_frailty,
        coalesce(c.has_advanced_illness, false) as has_advanced_illness,
        coalesce(m.has_dementia_medication, false) as has_dementia_medication
    from patients as p
    left join conditions as c on c.patient_id = p.patient_id
    left join procedures as r on r.patient_id = p.patient_id
    left join medications as m on m.patient_id = p.patient_id
),

judged as (
    select
        *,
        coalesce(age_at_period_end >= 66, false) and has_frailty
            and (has_advanced_illness or has_dementia_medication) as is_frail_advanced_illness
    from flags
)

select
    patient_id,
    age_at_period_end,
    is_hospice,
    is_palliative,
    is_frail_advanced_illness,
    has_frailty,
    has_advanced_illness,
    has_dementia_medication,
    is_hospice or is_palliative or is_frail_advanced_illness as is_excluded,
    nullif(concat_ws('; ',
        case when is_hospice then 'Hospice care in the period' end,
        case when is_palliative then 'Palliative care in the period' end,
        case when is_frail_advanced_illness then
            'Age 66+ with frailty and ' || case when has_advanced_illness then 'advanced illness'
                                                else 'a dementia medication' end
        end), '') as exclusion_reason
from judged
