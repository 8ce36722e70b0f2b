-- appointment_utilization: scheduling outcomes per week (Monday start), provider and department, as
-- of as_of_date(): appointments booked for the week, completed, no-shows, cancellations (late ones
-- apart), reschedules, and the no-show rate. athenaOne APPOINTMENTSTATUS: 'f' future / not yet
-- arrived, 'o' open (a no-show once past), '2' checked in, '3' checked out, '4' charge entered,
-- 'x' cancelled. Soft-deleted appointments (entered in error) never count.
with appointments as (
    select
        context_id,
        appointment_id,
        provider_id,
        department_id,
        appointment_date,
        appointment_start_at,
        appointment_status,
        is_no_show,
        cancelled_at,
        rescheduled_appointment_id
    from {{ ref('stg_dataview__appointments') }}
    -- booked on or before the as-of date (a row without a booking time counts)
    where coalesce(cast(scheduled_at as date) <= {{ as_of_date() }}, true)
),

flagged as (
    select
        *,
        cast(date_trunc('week', appointment_date) as date) as week_start,
        (appointment_status = 'x' and coalesce(cast(cancelled_at as date) <= {{ as_of_date() }}, true)) as is_cancelled,
        (appointment_date <= {{ as_of_date() }} and appointment_status in ('2', '3', '4')) as is_completed,
        -- the slot has come and its outcome is known: the no-show rate's denominator
        (appointment_date <= {{ as_of_date() }} and appointment_status not in ('x', 'f')) as is_outcome_known
    from appointments
)

select
    {{ as_of_date() }} as as_of_date,
    f.context_id,
    f.week_start,
    cast(f.week_start + 6 as date) as week_end,
    f.provider_id,
    coalesce(nullif(trim(concat_ws(' ', any_value(p.first_name), any_value(p.last_name))), ''), 'Provider ' || f.provider_id)
        as provider_name,
    f.department_id,
    coalesce(any_value(d.department_name), 'Department ' || f.department_id) as department_name,
    count(*) as booked,
    count(*) filter (where f.is_completed) as completed,
    count(*) filter (where f.is_no_show and f.is_outcome_known) as no_shows,
    count(*) filter (where f.is_cancelled) as cancellations,
    -- cancelled less than 24 hours before the appointment start
    count(*) filter (where f.is_cancelled and f.cancelled_at > f.appointment_start_at - interval 24 hour) as late_cancellations,
    -- cancelled and rebooked (the cancelled original points at the new appointment)
    count(*) filter (where f.is_cancelled and f.rescheduled_appointment_id is not null) as reschedules,
    count(*) filter (where f.is_outcome_known) as appointments_outcome_known,
    cast(count(*) filter (where f.is_no_show and f.is_outcome_known) as double)
        / nullif(count(*) filter (where f.is_outcome_known), 0) as no_show_rate
from flagged f
left join {{ ref('stg_dataview__providers') }} p
    on p.context_id = f.context_id and p.provider_id = f.provider_id
left join {{ ref('stg_dataview__departments') }} d
    on d.context_id = f.context_id and d.department_id = f.department_id
group by f.context_id, f.week_start, f.provider_id, f.department_id
