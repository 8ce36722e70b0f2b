"""Publishing assets: marts into the Caspio tables leadership dashboards read.

``assets.py``: one asset per mart, ``caspio/<mart>`` (group ``caspio``, depends on the dbt asset
``marts/<mart>``), its ``matches_mart`` asset check and ``publish_job``. ``resources.py``: the
``caspio`` resource. The work itself (keyed diff sync, budget, reconciliation) is done by
``athena_pipeline.caspio.publish``, which ``athena-pipeline publish`` runs too.
"""
