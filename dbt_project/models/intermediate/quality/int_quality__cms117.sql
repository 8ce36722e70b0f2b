-- CMS117 childhood immunization status, one row per denominator patient, in the shape every
-- int_quality__cms* model shares (the quality marts union them).
{{ quality_measure_rows('cms117', due_date_for_met=false) }}
