-- int_immunizations: vaccine administrations (FHIR Immunization) with the CMS117 vaccine group(s) their
-- CVX (or CPT) code belongs to. Grain: one row per Immunization and vaccine group: a combination
-- vaccine (e.g. CVX 110, DTaP-HepB-IPV) counts once for each group it covers. Vaccines in no group of
-- the value sets are kept with vaccine_group NULL. Every status is kept (completed, not-done,
-- entered-in-error): the measures filter status = 'completed'.
{% set groups = {
    'dtap_vaccine': 'DTaP', 'ipv_vaccine': 'IPV', 'mmr_vaccine': 'MMR', 'hib_vaccine': 'Hib',
    'hepatitis_b_vaccine': 'HepB', 'varicella_vaccine': 'VZV', 'pneumococcal_conjugate_vaccine': 'PCV',
    'hepatitis_a_vaccine': 'HepA', 'rotavirus_vaccine': 'RV', 'influenza_vaccine': 'Influenza',
} %}
with immunizations as (
    select *
    from {{ ref('stg_fhir__immunizations') }}
    where patient_id is not null
),

vaccine_groups as (
    select concept, case concept
        {%- for concept, group in groups.items() %}
        when '{{ concept }}' then '{{ group }}'
        {%- endfor %}
    end as vaccine_group, code_system, code
    from {{ ref('value_sets') }}
    where code_system in ('cvx', 'cpt')
      and concept in ({% for concept in groups %}'{{ concept }}'{{ ', ' if not loop.last }}{% endfor %})
),

matched as (
    select distinct c.immunization_id, g.vaccine_group, g.concept
    from {{ ref('stg_fhir__immunization_codings') }} as c
    inner join vaccine_groups as g on g.code_system = c.code_system and g.code = c.code
)

select
    i.patient_id,
    i.immunization_id,
    m.vaccine_group,
    m.concept,
    i.cvx_code,
    i.cpt_code,
    i.occurrence_date,
    i.status,
    i.encounter_id
from immunizations as i
left join matched as m on m.immunization_id = i.immunization_id
