-- CMS130 (Colorectal cancer screening), one row per denominator patient, in the shape every int_quality__cms*
-- model shares (the quality marts union them). The care gap is a denominator patient, not excluded,
-- who does not meet the numerator; due_date is the period end for a gap and, for a patient who meets
-- it, the day the evidence stops counting (see the numerator model).
{{ quality_measure_rows('cms130') }}
