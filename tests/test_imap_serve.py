"""End to end through a real `serve` process: a peer operator delivers over inbound SMTP (mutual TLS,
trust list), the practitioner's client reads over IMAP, and the read is in the audit trail."""

from __future__ import annotations

import asyncio
import imaplib
import json
import ssl
import subprocess
from pathlib import Path

import aiosmtplib
import pytest

from imap_service_support import ORG, PASSWORD, XDM
from imap_service_support import populate as populate_mailboxes
from mssante_operator.audit.reader import StoredRecord, iter_records
from mssante_operator.pki.devpki import DevPki
from mssante_operator.store import create_engine, session_factory
from mssante_operator.store.crypto import MasterKey
from mssante_operator.store.mailstore import MailStore
from mssante_operator.trust.sample import install_sample_list
from ops_support import EXE, ServeProcess, free_port
from pki_fixtures import STRUCTURE_ID, leaf

PEER_DOMAIN = "clinique-peer.mssante.test"


def serve_config(root: Path, pki: DevPki, url: str, ports: dict[str, int]) -> Path:
    settings = pki.pki_settings()
    config = root / "config.toml"
    config.write_text(
        f"""
[instance]
name = "imap-e2e"
hostname = "mail.hopital-demo.mssante.test"
data_dir = "var"

[store]
url = {json.dumps(url)}
master_key_file = {json.dumps(str(root / "master.key"))}

[pki]
ca_files = [{json.dumps(str(settings.ca_files[0]))}]
crl_dirs = [{json.dumps(str(settings.crl_dirs[0]))}]
server_cert = {json.dumps(str(settings.server_cert))}
server_key = {json.dumps(str(settings.server_key))}

[smtp_inbound]
enabled = true
host = "127.0.0.1"
port = {ports["smtp"]}

[smtp_submission]
enabled = false

[imap]
enabled = true
host = "127.0.0.1"
starttls_port = {ports["imap"]}
implicit_tls_port = {ports["imaps"]}

[relay]
enabled = false

[trust]
refresh_interval_hours = 0

[policy.auth]
password_allowed_types = ["ORG"]

[ops]
host = "127.0.0.1"
port = {ports["ops"]}

[logging]
format = "json"
level = "info"
"""
    )
    return config


async def prepare(root: Path, pki: DevPki, url: str, peer_cert: Path) -> None:
    engine = create_engine(url)
    try:
        sessions = session_factory(engine)
        store = MailStore(sessions, MasterKey.load(root / "master.key"))
        await populate_mailboxes(store)
        await install_sample_list(sessions, [(PEER_DOMAIN, leaf(peer_cert).subject.rfc4514_string())])
    finally:
        await engine.dispose()


async def audit_records(url: str) -> list[StoredRecord]:
    engine = create_engine(url)
    try:
        return [r async for r in iter_records(session_factory(engine)) if isinstance(r, StoredRecord)]
    finally:
        await engine.dispose()


@pytest.fixture
def peer(dev_pki: DevPki, tmp_path: Path) -> tuple[Path, Path]:
    out = tmp_path / "peer"
    out.mkdir()
    return dev_pki.issue_server(f"mail.{PEER_DOMAIN}", "CLINIQUE PEER", STRUCTURE_ID, out)


async def test_delivered_over_smtp_read_over_imap(
    store_url: str, dev_pki: DevPki, tmp_path: Path, peer: tuple[Path, Path]
) -> None:
    ports = {name: free_port() for name in ("smtp", "imap", "imaps", "ops")}
    config = serve_config(tmp_path, dev_pki, store_url, ports)
    MasterKey.generate(tmp_path / "master.key")
    upgrade = await asyncio.to_thread(
        subprocess.run,
        [str(EXE), "--config", str(config), "db", "upgrade"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert upgrade.returncode == 0, upgrade.stderr
    await prepare(tmp_path, dev_pki, store_url, peer[0])
    proc = ServeProcess(config, ports["ops"], tmp_path).start()
    try:
        await asyncio.to_thread(
            proc.wait_for, lambda e: e.get("event") == "listening" and e.get("service") == "ops-http", 60
        )
        assert any(e.get("service") == "imap" and e.get("tls") == "implicit" for e in proc.events())

        context = ssl.create_default_context(cafile=str(dev_pki.ca_bundle))
        context.check_hostname = False
        context.load_cert_chain(*peer)
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=ports["smtp"], tls_context=context, start_tls=True)
        await smtp.connect()
        errors, _ = await smtp.sendmail(f"labo@{PEER_DOMAIN}", [ORG], XDM)
        await smtp.quit()
        assert not errors

        client_context = ssl.create_default_context(cafile=str(dev_pki.ca_bundle))
        client_context.check_hostname = False

        def read() -> bytes:
            client = imaplib.IMAP4_SSL("127.0.0.1", ports["imaps"], ssl_context=client_context, timeout=30)
            client.login(ORG, PASSWORD)
            client.select("INBOX")
            typ, data = client.fetch("1", "(BODY[])")
            client.logout()
            assert typ == "OK"
            item = data[0]
            assert isinstance(item, tuple)
            return item[1]

        raw = await asyncio.to_thread(read)
        # What the peer sent, below the Received: line our SMTP side put on top.
        assert raw.startswith(b"Received: ") and raw.endswith(XDM)

        for _ in range(100):
            reads = [r for r in await audit_records(store_url) if r.event == "message.read"]
            if reads:
                break
            await asyncio.sleep(0.1)
        assert [(r.mailbox, r.message_ref) for r in reads] == [(ORG, "INBOX/1")]
    finally:
        proc.kill()
