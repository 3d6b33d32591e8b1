"""Fixtures for the SMTP listener tests (helpers in smtp_support.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from smtp_support import Inbound, PkiSet, make_test_pki, start_inbound
from sqlalchemy.ext.asyncio import AsyncEngine
from submission_support import Certs, World, make_certs, start_world, stop_world

from mssante_operator.pki.devpki import DevPki
from oidc_fixtures import LocalIssuer
from pki_fixtures import make_dev_pki


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


# -- submission (see submission_support.py) --------------------------------------------------


@pytest.fixture(scope="module")
def sub_pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    # A private PKI: the tests revoke a certificate, which re-signs the CA's CRL.
    return make_dev_pki(tmp_path_factory.mktemp("sub-pki"))


@pytest.fixture(scope="module")
def certs(sub_pki: DevPki, tmp_path_factory: pytest.TempPathFactory) -> Certs:
    rogue = DevPki.init(tmp_path_factory.mktemp("rogue-pki"), server_hostname="mail.rogue.test")
    return make_certs(sub_pki, rogue, tmp_path_factory.mktemp("sub-certs"))


@pytest.fixture
async def issuer(tmp_path: Path) -> AsyncIterator[LocalIssuer]:
    directory = tmp_path / "oidc"
    directory.mkdir()
    running = await LocalIssuer.start(directory)
    try:
        yield running
    finally:
        await running.stop()


@pytest.fixture
async def world(
    engine: AsyncEngine, sub_pki: DevPki, certs: Certs, tmp_path: Path, issuer: LocalIssuer
) -> AsyncIterator[World]:
    running = await start_world(engine, sub_pki, certs, tmp_path, oidc=issuer.settings())
    try:
        yield running
    finally:
        await stop_world(running)
