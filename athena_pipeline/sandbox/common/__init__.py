"""Machinery the sandbox's athenahealth and Caspio emulators share, written once.

- ``faults.py``: the fault registry (count / seeded-probability faults, spec strings, fired
  counters) behind ``emulator/faults.py`` and ``caspio/faults.py``;
- ``asgi.py``: the ``/_emulator`` control endpoints' JSON plumbing, the OAuth token form, and
  the request-observing ASGI middleware skeleton (request id header, route template, a log line);
- ``serving.py``: binding a loopback socket first, the base URL, and running an app in a
  background thread (the tests' servers).

Nothing here knows either API: what differs between the emulators is a parameter or a hook.
"""
