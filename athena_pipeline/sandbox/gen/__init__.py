"""The world generator: numpy/polars builders of the facts *timeline* (events up to the horizon).

Each builder takes the shared ``Ctx`` and returns polars DataFrames whose columns follow
``facts_schema.py`` plus timeline-only columns (``t_*``) that ``timeline.materialize`` uses to
compute the state of the world as of its clock.
"""
