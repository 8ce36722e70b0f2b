-- CMS130 exclusions: the shared set, plus colorectal cancer (condition) or a total colectomy (procedure
-- or condition) on or before the end of the measurement period. Grain: one row per excluded denominator
-- patient.
{% set mp_end = measurement_period_end() %}
with denominator as (
    select patient_id from {{ ref('int_quality__cms130_denominator') }}
),

cancer as (
    select patient_id, true as has_cancer
    from {{ ref('int_conditions') }}
    where concept = 'colorectal_cancer' and onset_date <= {{ mp_end }}
    group by patient_id
),

colectomy as (
    select patient_id from {{ ref('int_procedures') }}
    where concept = 'total_colectomy' and performed_date <= {{ mp_end }}
    union
    select patient_id from {{ ref('int_conditions') }}
    where concept = 'total_colectomy' and onset_date <= {{ mp_end }}
),

flags as (
    select
        d.patient_id,
        s.exclusion_reason as shared_reason,
        coalesce(c.has_cancer, false) as has_cancer,
        x.patient_id is not null as has_colectomy
    from denominator as d
    left join {{ ref('int_quality__shared_exclusions') }} as s on s.patient_id = d.patient_id
    left join cancer as c on c.patient_id = d.patient_id
    left join (select distinct patient_id from colectomy) as x on x.patient_id = d.patient_id
)

select
    patient_id,
    nullif(concat_ws('; ',
        shared_reason,
        case when has_cancer then 'Colorectal cancer' end,
        case when has_colectomy then 'Total colectomy' end), '') as exclusion_reason
from flags
where shared_reason is not null or has_cancer or has_colectomy
