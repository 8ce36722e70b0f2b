-- int_observations: the labs, vitals and screenings the measures read (HbA1c, blood pressure, BMI,
-- depression screening, tobacco status, ...), matched to value-set concepts on Observation.code.
-- Grain: one row per FHIR Observation and matching concept.
-- Blood pressure: ONE row per reading (concept 'blood_pressure_panel', e.g. LOINC 85354-9), with the
-- systolic (8480-6) and diastolic (8462-4) components pivoted into value_systolic / value_diastolic and
-- value_numeric left NULL. A stand-alone systolic or diastolic Observation keeps its own concept
-- (systolic_blood_pressure / diastolic_blood_pressure) with the value in value_numeric AND in
-- value_systolic / value_diastolic, so "all BP readings" = rows where either column is set.
-- An Observation with BP components whose panel code is in no value set still appears as a
-- 'blood_pressure_panel' row. Coded answers (tobacco status, screening result) are in value_code.
-- Soft-deleted observations never reach FHIR staging; cancelled / entered-in-error ones are dropped.
with observations as (
    select *
    from {{ ref('stg_fhir__observations') }}
    where patient_id is not null
      and coalesce(status, 'unknown') not in ('cancelled', 'entered-in-error')
),

matched as (
    select
        c.observation_id,
        v.concept,
        c.code,
        c.code_system,
        row_number() over (partition by c.observation_id, v.concept order by c.coding_index) as pick
    from {{ ref('stg_fhir__observation_codings') }} as c
    inner join {{ ref('value_sets') }} as v on v.code_system = c.code_system and v.code = c.code
    where c.element = 'code'
),

blood_pressure as (
    select
        observation_id,
        min(value_numeric) filter (where blood_pressure_part = 'systolic') as value_systolic,
        min(value_numeric) filter (where blood_pressure_part = 'diastolic') as value_diastolic,
        max(value_unit) as unit
    from {{ ref('stg_fhir__observation_components') }}
    where blood_pressure_part is not null
    group by observation_id
),

concepts as (
    select observation_id, concept, code, code_system
    from matched
    where pick = 1
    union all
    -- BP panels coded outside the value sets still count as readings
    select b.observation_id, 'blood_pressure_panel', o.code, o.code_system
    from blood_pressure as b
    inner join observations as o on o.observation_id = b.observation_id
    where not exists (
        select 1 from matched as m
        where m.observation_id = b.observation_id and m.concept = 'blood_pressure_panel'
    )
)

select
    o.patient_id,
    o.observation_id,
    c.concept,
    c.code,
    c.code_system,
    o.category,
    o.effective_at,
    o.effective_date,
    case when c.concept = 'blood_pressure_panel' then null else o.value_numeric end as value_numeric,
    o.value_code,
    o.value_code_system,
    o.value_display,
    coalesce(o.value_unit, b.unit) as unit,
    case
        when c.concept = 'blood_pressure_panel' then b.value_systolic
        when c.concept = 'systolic_blood_pressure' then o.value_numeric
    end as value_systolic,
    case
        when c.concept = 'blood_pressure_panel' then b.value_diastolic
        when c.concept = 'diastolic_blood_pressure' then o.value_numeric
    end as value_diastolic,
    o.status,
    o.encounter_id
from observations as o
inner join concepts as c on c.observation_id = o.observation_id
left join blood_pressure as b on b.observation_id = o.observation_id
