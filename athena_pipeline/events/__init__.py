"""athenahealth Event Subscriptions on the pipeline side: receiver, durable inbox, subscriptions as code.

- :mod:`~athena_pipeline.events.receiver`: the webhook receiver (Starlette), ``athena-pipeline webhook serve``;
- :mod:`~athena_pipeline.events.inbox`: the SQLite (WAL) inbox the receiver writes and sensors drain;
- :mod:`~athena_pipeline.events.subscriptions`: ``athena-pipeline subscriptions ensure|list|delete``;
- :mod:`~athena_pipeline.events.notification`, :mod:`~athena_pipeline.events.signature`,
  :mod:`~athena_pipeline.events.topics`: the notification format, its HMAC signature, the topic catalogue;
- :mod:`~athena_pipeline.events.cli`: the ``webhook``, ``subscriptions`` and ``sandbox events`` commands.

Plain Python: nothing here imports Dagster.
"""
