-- stg_dataview__appointments: athenaOne APPOINTMENT, typed and renamed; soft-deleted rows and other practices removed.
{% set columns = [
    ('APPOINTMENTID', 'bigint', 'appointment_id'),
    ('PATIENTID', 'bigint', 'patient_id'),
    ('DEPARTMENTID', 'bigint', 'department_id'),
    ('PROVIDERID', 'bigint', 'provider_id'),
    ('APPOINTMENTTYPEID', 'bigint', 'appointment_type_id'),
    ('APPOINTMENTDATE', 'date', 'appointment_date'),
    ('APPOINTMENTSTARTTIME', 'timestamp', 'appointment_start_at'),
    ('APPOINTMENTDURATION', 'integer', 'duration_minutes'),
    ('APPOINTMENTSTATUS', 'varchar', 'appointment_status'),
    ('NOSHOWYN', 'yn', 'is_no_show'),
    ('APPOINTMENTSCHEDULEDDATETIME', 'timestamp', 'scheduled_at'),
    ('APPOINTMENTCHECKINDATETIME', 'timestamp', 'checked_in_at'),
    ('APPOINTMENTCHECKOUTDATETIME', 'timestamp', 'checked_out_at'),
    ('APPOINTMENTCANCELLEDDATETIME', 'timestamp', 'cancelled_at'),
    ('APPOINTMENTCANCELREASON', 'varchar', 'cancel_reason'),
    ('RESCHEDULEDAPPOINTMENTID', 'bigint', 'rescheduled_appointment_id'),
    ('RESCHEDULEDDATETIME', 'timestamp', 'rescheduled_at'),
    ('CLAIMID', 'bigint', 'claim_id')
] %}

{{ dataview_staging('appointment', columns) }}
