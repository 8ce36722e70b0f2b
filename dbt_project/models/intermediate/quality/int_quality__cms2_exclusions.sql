-- CMS2 exclusions: denominator patients with bipolar disorder recorded (onset) on or before the end
-- of the measurement period, whether or not it has resolved since.
-- Grain: one row per excluded denominator patient.
select
    d.patient_id,
    'Bipolar disorder' as exclusion_reason,
    min(c.onset_date) as exclusion_date
from {{ ref('int_quality__cms2_denominator') }} as d
inner join {{ ref('int_conditions') }} as c on c.patient_id = d.patient_id
where c.concept = 'bipolar_disorder'
  and c.onset_date <= {{ measurement_period_end() }}
group by d.patient_id
