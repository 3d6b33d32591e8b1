"""Shared fixtures. Every store test runs on SQLite and on PostgreSQL through `store_url`/`engine`.

PostgreSQL is the server on 127.0.0.1:5432 (override with MSSANTE_TEST_PG_DSN); each test gets a
database of its own, created from template0 and dropped afterwards. A test never skips because
PostgreSQL is missing: `.ci/run` installs and starts it, and a missing server is a failure.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from mssante_operator.pki.devpki import DevPki
from mssante_operator.store import create_engine, upgrade

PG_DSN = os.environ.get("MSSANTE_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _pg_server_dsn() -> str:
    return PG_DSN


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """An empty database URL, on each backend in turn."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
        return
    name = f"mss_test_{uuid.uuid4().hex[:16]}"
    admin = await asyncpg.connect(_pg_server_dsn())
    try:
        await admin.execute(f"CREATE DATABASE \"{name}\" TEMPLATE template0 ENCODING 'UTF8'")
    finally:
        await admin.close()
    base = PG_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    try:
        yield f"{base}/{name}"
    finally:
        admin = await asyncpg.connect(_pg_server_dsn())
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture
async def engine(store_url: str) -> AsyncIterator[AsyncEngine]:
    """A migrated store on each backend."""
    eng = create_engine(store_url)
    await upgrade(eng)
    try:
        yield eng
    finally:
        await eng.dispose()


@pytest.fixture
def project_root() -> Iterator[Path]:
    yield PROJECT_ROOT


@pytest.fixture(scope="session")
def dev_pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    """One IGC-Santé look-alike PKI per test session (server.crt for mail.hopital-demo.mssante.test).

    Issue what a test needs into its own tmp_path: `dev_pki.issue_person(PERSON_ID, "Jean", "Martin",
    tmp_path)`; trust it with `dev_pki.pki_settings()` (see tests/pki_fixtures.py). Do not revoke the
    shared server certificate or CAs; build a private DevPki for that.
    """
    from pki_fixtures import make_dev_pki

    return make_dev_pki(tmp_path_factory.mktemp("dev-pki"))
