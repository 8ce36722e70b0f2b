-- CMS69 exclusions: denominator patients pregnant at any time during the measurement period (a
-- pregnancy condition with onset on or before its end and no abatement before its start), or in
-- hospice or palliative care during it (int_quality__shared_exclusions).
-- Grain: one row per excluded denominator patient; exclusion_reason lists every reason that applies.
with pregnancy as (
    select c.patient_id, min(c.onset_date) as onset_date
    from {{ ref('int_conditions') }} as c
    where c.concept = 'pregnancy'
      and c.onset_date <= {{ measurement_period_end() }}
      and coalesce(c.abatement_date, date '9999-12-31') >= {{ measurement_period_start() }}
    group by c.patient_id
),

flags as (
    select
        d.patient_id,
        p.patient_id is not null as is_pregnant,
        coalesce(x.is_hospice, false) as is_hospice,
        coalesce(x.is_palliative, false) as is_palliative
    from {{ ref('int_quality__cms69_denominator') }} as d
    left join pregnancy as p on p.patient_id = d.patient_id
    left join {{ ref('int_quality__shared_exclusions') }} as x on x.patient_id = d.patient_id
)

select
    patient_id,
    concat_ws('; ',
        case when is_pregnant then 'Pregnancy during the period' end,
        case when is_hospice then 'Hospice care in the period' end,
        case when is_palliative then 'Palliative care in the period' end
    ) as exclusion_reason
from flags
where is_pregnant or is_hospice or is_palliative
