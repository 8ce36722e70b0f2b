"""Root fixtures shared by every test package. Keep this small: package fixtures live beside
their tests (e.g. tests/sandbox/conftest.py)."""

from __future__ import annotations

import pytest

from athena_pipeline.settings import ENV_VARS


@pytest.fixture
def default_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unset every pipeline variable, so code under test sees the sandbox defaults."""
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
