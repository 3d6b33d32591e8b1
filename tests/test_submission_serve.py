"""`mssante-operator serve` with the submission listener wired by ops.compose: a real process, a
real client certificate, a message into a local INBOX and one into the relay queue."""

from __future__ import annotations

import asyncio
import json
import signal
import ssl
from pathlib import Path

import aiosmtplib
from sqlalchemy import select

from mssante_operator.config.models import MailboxType
from mssante_operator.identifiers import luhn_check_digit
from mssante_operator.pki.devpki import DevPki
from mssante_operator.store import create_engine, session_factory
from mssante_operator.store.crypto import MasterKey
from mssante_operator.store.mailstore import MailStore
from mssante_operator.store.migrate import upgrade
from mssante_operator.store.models import QueueEntry
from mssante_operator.trust.sample import certificate_subject, install_sample_list
from ops_support import ServeProcess, config_text, free_port
from pki_fixtures import PERSON_ID

DOMAIN = "hopital-demo.mssante.test"
JEAN = f"jean.martin@{DOMAIN}"
CLAIRE = f"claire.durand@{DOMAIN}"
PEER = "chu-voisin.mssante.test"


async def test_serve_accepts_an_authenticated_submission(dev_pki: DevPki, tmp_path: Path) -> None:
    root = tmp_path
    (root / "var").mkdir()
    key_file = root / "var" / "master.key"
    MasterKey.generate(key_file)
    url = f"sqlite+aiosqlite:///{root / 'var' / 'store.db'}"
    engine = create_engine(url)
    await upgrade(engine)
    sessions = session_factory(engine)
    store = MailStore(sessions, MasterKey.load(key_file))
    await store.add_domain(DOMAIN)
    await store.add_mailbox(JEAN, MailboxType.PER, owner_national_id=PERSON_ID)
    await store.add_mailbox(
        CLAIRE, MailboxType.PER, owner_national_id="8" + "1000000001" + luhn_check_digit("1000000001")
    )
    await install_sample_list(
        sessions,
        [(DOMAIN, certificate_subject(dev_pki.server_cert)), (PEER, "CN=mail.chu-voisin.mssante.test,C=FR")],
    )
    cert, key = dev_pki.issue_person(PERSON_ID, "Jean", "Martin", tmp_path, name="jean-serve")
    starttls_port, implicit_port = free_port(), free_port()
    text = config_text(
        store_url=url,
        server_cert=dev_pki.server_cert,
        server_key=dev_pki.server_key,
        ca_files=[dev_pki.ca_bundle],
        port=free_port(),
    ).replace(
        "[smtp_submission]\nenabled = false",
        '[smtp_submission]\nenabled = true\nhost = "127.0.0.1"\n'
        f"starttls_port = {starttls_port}\nimplicit_tls_port = {implicit_port}",
    )
    text = text.replace('hostname = "mail.test.mssante.test"', f'hostname = "mail.{DOMAIN}"')
    text = text.replace("[store]\n", f"[store]\nmaster_key_file = {json.dumps(str(key_file))}\n")
    text += "\n[relay]\nenabled = false\n"
    config = root / "config.toml"
    config.write_text(text)

    proc = ServeProcess(config, 0, root).start()
    try:
        proc.wait_for(lambda e: e.get("event") == "listening" and e.get("tls") == "implicit")
        context = ssl.create_default_context(cafile=str(dev_pki.ca_bundle))
        context.check_hostname = False
        context.load_cert_chain(cert, key)
        client = aiosmtplib.SMTP(
            hostname="127.0.0.1", port=implicit_port, use_tls=True, tls_context=context, timeout=30
        )
        await client.connect()
        try:
            ehlo = await client.ehlo()
            assert "EXTERNAL" in ehlo.message
            assert (await client.execute_command(b"AUTH", b"EXTERNAL", b"=")).code == 235
            await client.mail(JEAN)
            await client.rcpt(CLAIRE)
            await client.rcpt(f"dr.dupont@{PEER}", options=["NOTIFY=SUCCESS"])
            reply = await client.data(
                f"From: <{JEAN}>\r\nTo: <{CLAIRE}>\r\nSubject: serve\r\n\r\nok\r\n".encode()
            )
            assert reply.code == 250, reply
        finally:
            client.close()
        folder = await store.get_folder(CLAIRE, "INBOX")
        [info] = await store.list_messages(folder.id)
        assert b"with EXTERNAL)" in await store.read_message_body(info.message_id)
        async with sessions() as session:
            [entry] = (await session.scalars(select(QueueEntry))).all()
            assert entry.recipient_domain == PEER
        proc.signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait_exit, 30) == 0
    finally:
        proc.kill()
        await engine.dispose()
