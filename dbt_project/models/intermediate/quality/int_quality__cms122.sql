-- CMS122 (Diabetes: HbA1c poor control > 9%), one row per denominator patient, in the shape every
-- int_quality__cms* model shares (the quality marts union them). INVERSE: the care gap is being IN the
-- numerator (poor control, or no HbA1c this period), not out of it.
{{ quality_measure_rows('cms122', inverse=true, due_date_for_met=false) }}
