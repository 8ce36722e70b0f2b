-- int_remittance_lines: every adjustment line of every remit (ERAKICK, the 835 CAS segment as
-- athenaOne stores it) with its remit header (ERARECORD), group code, CARC, kick code and the denial
-- classification: category and avoidable flag from the carc_categories seed, falling back to the
-- kick_codes seed when the CARC is unknown (metrics.md §2.4 plan: prefer CARC, fall back to kick code).
-- is_denial_reason says whether the line can make a zero-paid remit a denial (metrics.md §2.3):
-- CR (correction / reversal) lines never do; CARCs the seed marks as not denials (PR 1/2/3, CO-45, 23,
-- 253, 59) never do; a code neither seed knows does (fail loud rather than hide a denial).
with remits as (
    select * from {{ ref('stg_dataview__era_records') }}
),

lines as (
    select * from {{ ref('stg_dataview__era_kicks') }}
)

select
    l.context_id,
    l.era_kick_id,
    l.era_record_id,
    l.claim_id,
    r.patient_id,
    r.insurance_package_id,
    lower(r.transfer_type) as payer_role,
    r.remit_date,
    r.remit_sequence,
    r.paid_amount as remit_paid_amount,
    l.group_code,
    g.group_name,
    l.adjustment_reason_code as carc,
    c.description as carc_description,
    l.kick_code,
    l.kick_reason_id,
    l.kicked_amount,
    case
        when c.carc is not null then 'carc'
        when k.kick_code is not null then 'kick_code'
        else 'unmapped'
    end as category_source,
    coalesce(c.denial_category, k.denial_category, 'unmapped') as denial_category,
    coalesce(c.denial_category_name, k.kick_reason_name, 'Unmapped code ' || coalesce(l.adjustment_reason_code, l.kick_code, '?'))
        as denial_category_name,
    coalesce(c.is_avoidable, k.is_avoidable) as is_avoidable,
    (coalesce(l.group_code, '') <> 'CR' and coalesce(c.is_denial, k.is_denial, true)) as is_denial_reason
from lines l
left join remits r
    on r.context_id = l.context_id and r.era_record_id = l.era_record_id
left join {{ ref('group_codes') }} g on g.group_code = l.group_code
left join {{ ref('carc_categories') }} c on c.carc = l.adjustment_reason_code
left join {{ ref('kick_codes') }} k on k.kick_code = l.kick_code
