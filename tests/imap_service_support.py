"""A real `ImapService` on a real `MailStore` (SQLite or PostgreSQL), for imaplib over real TLS."""

from __future__ import annotations

import imaplib
import os
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from mssante_operator.accounts import hash_password
from mssante_operator.audit import AuditLog
from mssante_operator.audit.reader import StoredRecord, iter_records
from mssante_operator.auth import Authenticator
from mssante_operator.config import MailboxType, Settings
from mssante_operator.config.models import (
    AuthPolicySettings,
    ImapSettings,
    InstanceSettings,
    PolicySettings,
)
from mssante_operator.imap.service import ImapService
from mssante_operator.pki import CertificateValidator
from mssante_operator.pki.devpki import DevPki
from mssante_operator.store import session_factory
from mssante_operator.store.crypto import MasterKey
from mssante_operator.store.mailstore import MailStore
from mssante_operator.store.models import MailboxStatus
from pki_fixtures import PERSON_ID, SERVER_HOST, STRUCTURE_ID

DOMAIN = "hopital-demo.mssante.test"
PER = f"jean.martin@{DOMAIN}"  # a practitioner's own mailbox: certificate only (policy)
ORG = f"secretariat.cardio@{DOMAIN}"  # a service mailbox: password allowed (policy)
SUSPENDED = f"ancien.service@{DOMAIN}"
PASSWORD = "Corr3ct-Horse-Battery-Staple"

XDM = (
    b"From: labo@labo-c.mssante.fr\r\nTo: jean.martin@hopital-demo.mssante.test\r\n"
    b"Subject: =?UTF-8?Q?R=C3=A9sultats?=\r\nDate: Mon, 6 Jan 2025 10:00:00 +0100\r\n"
    b"Message-ID: <r1@labo-c>\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
    b"--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    b"Glyc\xc3\xa9mie normale.\r\n--b\r\nContent-Type: application/zip; name=IHE_XDM.ZIP\r\n"
    b"Content-Disposition: attachment; filename=IHE_XDM.ZIP\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    b"UEsDBBQAAAAIAA==\r\n--b--\r\n"
)


def message(subject: str, body: str = "Bonjour.") -> bytes:
    return (
        f"From: a@labo-c.mssante.fr\r\nTo: {PER}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '.')}@labo-c>\r\n\r\n{body}\r\n"
    ).encode()


@dataclass
class ImapEnv:
    settings: Settings
    store: MailStore
    audit: AuditLog
    service: ImapService
    pki: DevPki
    master_key: bytes
    tmp: Path

    def client_context(self, cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki.ca_bundle))
        ctx.check_hostname = False  # the server certificate names the demo host, we dial 127.0.0.1
        if cert is not None:
            ctx.load_cert_chain(*cert)
        return ctx

    def starttls_client(self) -> imaplib.IMAP4:
        client = imaplib.IMAP4("127.0.0.1", self.service.starttls_port, timeout=30)
        client.starttls(ssl_context=self.client_context())
        return client

    def implicit_client(self, cert: tuple[Path, Path] | None = None) -> imaplib.IMAP4_SSL:
        return imaplib.IMAP4_SSL(
            "127.0.0.1", self.service.implicit_tls_port, ssl_context=self.client_context(cert), timeout=30
        )

    def person_cert(self, national_id: str = PERSON_ID) -> tuple[Path, Path]:
        out = self.tmp / f"person-{national_id}"
        out.mkdir(exist_ok=True)
        return self.pki.issue_person(national_id, "Jean", "Martin", out)

    async def records(self, event: str | None = None) -> list[StoredRecord]:
        await self.audit.flush()
        found = [r async for r in iter_records(self.audit._sessions) if isinstance(r, StoredRecord)]
        return [r for r in found if event is None or r.event == event]


def make_settings(pki: DevPki, **imap: object) -> Settings:
    section = ImapSettings(host="127.0.0.1", **imap)  # type: ignore[arg-type]
    return Settings(
        instance=InstanceSettings(hostname=SERVER_HOST),
        pki=pki.pki_settings(),
        # Port 0 (ephemeral) is not a valid configuration value; tests bypass validation for it.
        imap=section.model_copy(update={"starttls_port": 0, "implicit_tls_port": 0}),
        policy=PolicySettings(auth=AuthPolicySettings(password_allowed_types=[MailboxType.ORG])),
    )


async def populate(store: MailStore) -> None:
    await store.add_domain(DOMAIN)
    digest = hash_password(PASSWORD)
    await store.add_mailbox(PER, MailboxType.PER, owner_national_id=PERSON_ID, password_hash=digest)
    await store.add_mailbox(ORG, MailboxType.ORG, structure_id=STRUCTURE_ID, password_hash=digest)
    await store.add_mailbox(SUSPENDED, MailboxType.ORG, structure_id=STRUCTURE_ID, password_hash=digest)
    await store.set_mailbox_status(SUSPENDED, MailboxStatus.SUSPENDED)


@asynccontextmanager
async def running_imap(engine: AsyncEngine, pki: DevPki, tmp: Path, **imap: object) -> AsyncIterator[ImapEnv]:
    sessions = session_factory(engine)
    key = os.urandom(32)
    store = MailStore(sessions, MasterKey(key))
    await populate(store)
    audit = AuditLog(sessions, flush_interval=0.01)
    await audit.start()
    settings = make_settings(pki, **imap)
    validator = CertificateValidator.from_settings(settings.pki)
    service = ImapService(
        settings, store, Authenticator.from_settings(settings, directory=store), audit, lambda: validator
    )
    await service.start()
    try:
        yield ImapEnv(settings, store, audit, service, pki, key, tmp)
    finally:
        await service.stop(1.0)
        await audit.stop()
