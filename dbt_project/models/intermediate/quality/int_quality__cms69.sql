-- CMS69 BMI screening and follow-up plan, one row per denominator patient, in the shape every
-- int_quality__cms* model shares (the quality marts union them).
{{ quality_measure_rows('cms69', due_date_for_met=false) }}
