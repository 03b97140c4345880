"""Integration tests: real engines (multiprocessing, Dask distributed) in child
processes, under `pickleguard record` and `pickleguard run`. They are slower than the
rest; `-m "not integration"` leaves them out, and CI runs them."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "integration: runs an engine's processes under record and run (slow)"
    )
