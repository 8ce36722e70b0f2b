-- Shared helpers for the FHIR rendering. Executed once per render on a connection where the
-- facts database is attached (read-only) as `f`. `{pid}` is replaced with the practice id
-- (an integer) before execution; nothing else is templated.

-- FHIR logical ids follow athenahealth's style: a-{practiceid}.{Kind}-{athenaid}.
CREATE OR REPLACE TEMP MACRO fid(kind, id) AS 'a-{pid}.' || kind || '-' || CAST(id AS VARCHAR);
CREATE OR REPLACE TEMP MACRO fhir_instant(ts) AS strftime(CAST(ts AS TIMESTAMP), '%Y-%m-%dT%H:%M:%SZ');
CREATE OR REPLACE TEMP MACRO fhir_date(d) AS strftime(CAST(d AS DATE), '%Y-%m-%d');

-- JSON is assembled as text with concat(), not with struct literals + to_json: on a
-- practice-sized world that is several times faster (struct building dominated the time).
-- Building blocks use `||`, so each is NULL when an input it needs is NULL; concat() skips
-- NULL arguments, so an optional member or list element simply disappears (FHIR forbids
-- "x":null). Every value that comes from facts text goes through jstr(), which escapes it.
CREATE OR REPLACE TEMP MACRO jstr(x) AS CAST(to_json(CAST(x AS VARCHAR)) AS VARCHAR);
CREATE OR REPLACE TEMP MACRO jmember(name, val) AS ',"' || name || '":' || val;
CREATE OR REPLACE TEMP MACRO jbool(b) AS CASE WHEN b THEN 'true' WHEN NOT b THEN 'false' END;
CREATE OR REPLACE TEMP MACRO jref(rtype, id) AS '{"reference":"' || rtype || '/' || id || '"}';
CREATE OR REPLACE TEMP MACRO jcoding(sys, code, disp) AS
    '{"system":' || jstr(sys) || ',"code":' || jstr(code) || coalesce(',"display":' || jstr(disp), '') || '}';
CREATE OR REPLACE TEMP MACRO jconcept(sys, code, disp, txt) AS
    '{"coding":[' || jcoding(sys, code, disp) || ']' || coalesce(',"text":' || jstr(txt), '') || '}';
CREATE OR REPLACE TEMP MACRO jtext(txt) AS '{"text":' || jstr(txt) || '}';
CREATE OR REPLACE TEMP MACRO jperiod(s, e) AS
    '{' || nullif(concat_ws(',', '"start":"' || s || '"', '"end":"' || e || '"'), '') || '}';
CREATE OR REPLACE TEMP MACRO jmeta(lu, profile) AS
    '{"lastUpdated":"' || fhir_instant(lu) || '"'
    || coalesce(',"profile":["http://hl7.org/fhir/us/core/StructureDefinition/' || profile || '"]', '') || '}';

-- Effective deletion state of rows other resources point at. A child of a soft-deleted
-- patient is itself gone from FHIR, so encounters/appointments inherit the patient's deleted_at.
CREATE OR REPLACE TEMP TABLE st_encounter AS
SELECT e.encounter_id, coalesce(e.deleted_at, p.deleted_at) AS deleted_at
FROM f.encounters e LEFT JOIN f.patients p ON p.patient_id = e.patient_id;

CREATE OR REPLACE TEMP TABLE st_appointment AS
SELECT a.appointment_id, coalesce(a.deleted_at, p.deleted_at) AS deleted_at
FROM f.appointments a LEFT JOIN f.patients p ON p.patient_id = a.patient_id;

-- CDC Race & Ethnicity code set (urn:oid:2.16.840.1.113883.6.238): the five OMB race
-- categories go in `ombCategory`, anything else in `detailed`.
CREATE OR REPLACE TEMP TABLE lk_race AS SELECT * FROM (VALUES
    ('1002-5', 'American Indian or Alaska Native', TRUE),
    ('2028-9', 'Asian', TRUE),
    ('2054-5', 'Black or African American', TRUE),
    ('2076-8', 'Native Hawaiian or Other Pacific Islander', TRUE),
    ('2106-3', 'White', TRUE),
    ('2131-1', 'Other Race', FALSE)
) v(code, display, omb);

CREATE OR REPLACE TEMP TABLE lk_ethnicity AS SELECT * FROM (VALUES
    ('2135-2', 'Hispanic or Latino'),
    ('2186-5', 'Not Hispanic or Latino')
) v(code, display);

CREATE OR REPLACE TEMP TABLE lk_language AS SELECT * FROM (VALUES
    ('en', 'English'), ('es', 'Spanish'), ('zh', 'Chinese'), ('vi', 'Vietnamese'),
    ('ko', 'Korean'), ('ru', 'Russian'), ('ar', 'Arabic'), ('fr', 'French'),
    ('ht', 'Haitian'), ('pt', 'Portuguese'), ('tl', 'Tagalog'), ('de', 'German'),
    ('pl', 'Polish'), ('it', 'Italian'), ('ja', 'Japanese'), ('hi', 'Hindi'),
    ('so', 'Somali'), ('am', 'Amharic'), ('fa', 'Persian'), ('ur', 'Urdu'),
    ('bn', 'Bengali'), ('hmn', 'Hmong'), ('km', 'Khmer'), ('ne', 'Nepali')
) v(code, display);
