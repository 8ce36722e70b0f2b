-- CMS138 exclusions: denominator patients in hospice care during the measurement period.
-- Grain: one row per excluded denominator patient.
select
    d.patient_id,
    'Hospice care in the period' as exclusion_reason
from {{ ref('int_quality__cms138_denominator') }} as d
inner join {{ ref('int_quality__shared_exclusions') }} as x on x.patient_id = d.patient_id
where x.is_hospice
