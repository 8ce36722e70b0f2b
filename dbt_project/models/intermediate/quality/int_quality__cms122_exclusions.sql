-- CMS122 exclusions: the shared set only (hospice, palliative care, 66+ with frailty and advanced
-- illness or a dementia medication; see int_quality__shared_exclusions). Grain: one row per excluded
-- denominator patient.
select
    d.patient_id,
    s.exclusion_reason
from {{ ref('int_quality__cms122_denominator') }} as d
inner join {{ ref('int_quality__shared_exclusions') }} as s on s.patient_id = d.patient_id
where s.is_excluded
