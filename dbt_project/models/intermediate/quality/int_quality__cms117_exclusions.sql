-- CMS117 exclusions: denominator children in hospice care during the measurement period.
-- The eCQM's other exclusions (SCID, immunodeficiency, HIV, lymphoreticular cancers, intussusception)
-- have no value sets in seeds/value_sets.csv and are not counted by the sandbox ground truth.
-- Grain: one row per excluded denominator patient.
select
    d.patient_id,
    'Hospice care in the period' as exclusion_reason
from {{ ref('int_quality__cms117_denominator') }} as d
inner join {{ ref('int_quality__shared_exclusions') }} as x on x.patient_id = d.patient_id
where x.is_hospice
