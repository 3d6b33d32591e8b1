"""Fixtures for the SMTP listener tests (helpers in smtp_support.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from smtp_support import Inbound, PkiSet, make_test_pki, start_inbound


@pytest.fixture(scope="session")
def test_pki(tmp_path_factory: pytest.TempPathFactory) -> PkiSet:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
async def inbound(tmp_path: Path, test_pki: PkiSet) -> AsyncIterator[Inbound]:
    running = await start_inbound(tmp_path, test_pki)
    try:
        yield running
    finally:
        await running.service.stop(grace=2.0)
