"""Tests of the Dagster definitions under ``athena_pipeline/defs/``."""
