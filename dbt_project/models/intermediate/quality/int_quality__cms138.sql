-- CMS138 tobacco use screening and cessation intervention, one row per denominator patient, in the shape every
-- int_quality__cms* model shares (the quality marts union them).
{{ quality_measure_rows('cms138', due_date_for_met=false) }}
