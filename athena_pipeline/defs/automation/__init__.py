"""Automation: what makes the pipeline run by itself.

What will live here: the nightly schedule (incremental ``_since`` export, dbt build, publish),
the sensor that drains the Event Subscriptions inbox into targeted refreshes (deduplicated by
event id), and the declarative automation conditions on downstream assets.
"""
