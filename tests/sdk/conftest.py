"""Fixtures of the SDK's tests: a scripted server (a TEST DOUBLE) and a client of it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sdk.scripted_server import RunningServer, start_server
from slos_serve.client import Client


@pytest.fixture
def srv() -> Iterator[RunningServer]:
    ts = start_server()
    yield ts
    ts.server.stop(0)


@pytest.fixture
def client(srv: RunningServer) -> Iterator[Client]:
    with Client(srv.target, timeout=10) as c:
        yield c
