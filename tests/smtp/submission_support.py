"""Support for the submission tests: a running submission service on 127.0.0.1 (ephemeral ports)
wired to the real packages (MailStore on the `engine` backend, the dev PKI and its CRLs, the trust
list, the Authenticator with a local OpenID Connect issuer, the audit log)."""

from __future__ import annotations

import base64
import os
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from mssante_operator.accounts import hash_password
from mssante_operator.audit import AuditLog
from mssante_operator.auth import Authenticator, BearerTokenValidator, MemoryRateLimiter
from mssante_operator.config.models import (
    AuditSettings,
    AuthPolicySettings,
    AuthSettings,
    InstanceSettings,
    MailboxType,
    PolicySettings,
    RateLimitPolicy,
    RateLimitSettings,
    SmtpSubmissionSettings,
)
from mssante_operator.config.settings import Settings
from mssante_operator.identifiers import luhn_check_digit
from mssante_operator.ops.adapters import DsnSender
from mssante_operator.ops.metrics import Metrics
from mssante_operator.ops.submission_wiring import (
    MetricsObserver,
    PkiClientVerifier,
    StoreLocalRecipients,
    StoreSubmissionSink,
    SubmissionAuditAdapter,
    TrustRecipients,
    submission_tls_context,
)
from mssante_operator.pki import CertificateValidator
from mssante_operator.pki.devpki import DevPki
from mssante_operator.smtp.submission_ports import (
    DirectoryListing,
    DirectoryMirror,
    NoDirectoryMirror,
    SubmissionAuditEvent,
    SubmissionPorts,
)
from mssante_operator.smtp.submission_service import SubmissionSmtpService
from mssante_operator.store import session_factory
from mssante_operator.store.crypto import MasterKey
from mssante_operator.store.mailstore import MailStore
from mssante_operator.store.models import QueueEntry, QueueRecipient
from mssante_operator.trust.sample import certificate_subject, install_sample_list

SERVER_HOST = "mail.hopital-demo.mssante.test"
DOMAIN = "hopital-demo.mssante.test"
STRUCTURE_ID = "1750000018"
PERSON_ID = "810000000009"
CLAIRE_ID = "8" + "1000000001" + luhn_check_digit("1000000001")
JEAN = f"jean.martin@{DOMAIN}"
CLAIRE = f"claire.durand@{DOMAIN}"
CARDIO = f"cardiologie@{DOMAIN}"
DPI = f"dpi@{DOMAIN}"
SUSPENDED = f"ancien@{DOMAIN}"
PEER_DOMAIN = "chu-voisin.mssante.test"
PEER_DN = "CN=mail.chu-voisin.mssante.test,OU=1350000019,O=CHU VOISIN,ST=Ille-et-Vilaine (35),C=FR"
PATIENT_DOMAIN = "patient.mssante.fr"
PATIENT_DN = "CN=mail.patient.mssante.fr,OU=1750000000,O=OPERATEUR PATIENT,C=FR"
PASSWORD = "correct horse battery staple"
LENIENT = RateLimitPolicy(max_failures=1000, free_failures=1000)


class RecordingAudit(SubmissionAuditAdapter):
    """The real audit adapter, keeping a copy of each event for the assertions."""

    def __init__(self, audit: AuditLog) -> None:
        super().__init__(audit)
        self.events: list[SubmissionAuditEvent] = []

    def record(self, event: SubmissionAuditEvent) -> None:
        self.events.append(event)
        super().record(event)

    async def record_durable(self, event: SubmissionAuditEvent) -> None:
        await super().record_durable(event)
        self.events.append(event)

    def named(self, name: str) -> list[SubmissionAuditEvent]:
        return [e for e in self.events if e.event == name]


class FixedDirectory:
    """A directory mirror listing exactly `listed` (a stand-in until the directory package lands)."""

    def __init__(self, listed: set[str]) -> None:
        self.listed = listed

    async def listing(self, address: str) -> DirectoryListing:
        return DirectoryListing.LISTED if address.lower() in self.listed else DirectoryListing.NOT_LISTED


@dataclass
class Certs:
    person: tuple[Path, Path]
    organisation: tuple[Path, Path]
    revoked: tuple[Path, Path]
    rogue: tuple[Path, Path]  # a person certificate from another CA


@dataclass
class World:
    service: SubmissionSmtpService
    store: MailStore
    sessions: async_sessionmaker[AsyncSession]
    pki: DevPki
    certs: Certs
    audit: RecordingAudit
    audit_log: AuditLog
    metrics: Metrics
    authenticator: Authenticator
    settings: Settings
    wakes: list[int] = field(default_factory=list)

    @property
    def starttls_port(self) -> int:
        return self.service.starttls_port

    @property
    def implicit_port(self) -> int:
        return self.service.implicit_tls_port

    def client_context(self, cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.pki.ca_bundle))
        context.check_hostname = False  # the server certificate names mail.hopital-demo..., we dial 127.0.0.1
        if cert is not None:
            context.load_cert_chain(cert[0], cert[1])
        return context

    async def inbox(self, address: str) -> list[bytes]:
        folder = await self.store.get_folder(address, "INBOX")
        messages = await self.store.list_messages(folder.id)
        return [await self.store.read_message_body(m.message_id) for m in messages]

    async def queue(self) -> list[tuple[QueueEntry, list[QueueRecipient]]]:
        async with self.sessions() as session:
            entries = (await session.scalars(select(QueueEntry).order_by(QueueEntry.id))).all()
            out = []
            for entry in entries:
                recipients = (
                    await session.scalars(select(QueueRecipient).where(QueueRecipient.entry_id == entry.id))
                ).all()
                out.append((entry, list(recipients)))
            return out


def make_certs(pki: DevPki, rogue_pki: DevPki, directory: Path) -> Certs:
    person = pki.issue_person(PERSON_ID, "Jean", "Martin", directory, name="jean")
    organisation = pki.issue_org("DPI HOPITAL DEMO", STRUCTURE_ID, directory, name="dpi-org")
    revoked = pki.issue_person(PERSON_ID, "Jean", "Martin", directory, name="jean-revoked")
    pki.revoke(revoked[0])
    rogue = rogue_pki.issue_person(PERSON_ID, "Jean", "Martin", directory, name="jean-rogue")
    return Certs(person, organisation, revoked, rogue)


def b64(data: bytes | str) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode("ascii")


async def start_world(
    engine: AsyncEngine,
    pki: DevPki,
    certs: Certs,
    tmp_path: Path,
    *,
    oidc: object | None = None,
    account_limits: RateLimitPolicy = LENIENT,
    directory: DirectoryMirror | None = None,
    password_types: tuple[MailboxType, ...] = (MailboxType.PER, MailboxType.ORG),
    **section: object,
) -> World:
    sessions = session_factory(engine)
    store = MailStore(sessions, MasterKey(os.urandom(32)))
    await store.add_domain(DOMAIN)
    hashed = hash_password(PASSWORD)
    await store.add_mailbox(
        JEAN, MailboxType.PER, owner_national_id=PERSON_ID, structure_id=STRUCTURE_ID, password_hash=hashed
    )
    await store.add_mailbox(CLAIRE, MailboxType.PER, owner_national_id=CLAIRE_ID, password_hash=hashed)
    await store.add_mailbox(CARDIO, MailboxType.ORG, structure_id=STRUCTURE_ID, password_hash=hashed)
    await store.add_mailbox(DPI, MailboxType.APP, structure_id=STRUCTURE_ID)
    await store.add_mailbox(SUSPENDED, MailboxType.PER, owner_national_id=CLAIRE_ID)
    from mssante_operator.store.models import MailboxStatus

    await store.set_mailbox_status(SUSPENDED, MailboxStatus.SUSPENDED)
    await install_sample_list(
        sessions,
        [
            (DOMAIN, certificate_subject(pki.server_cert)),
            (PEER_DOMAIN, PEER_DN),
            (PATIENT_DOMAIN, PATIENT_DN),
        ],
    )
    from mssante_operator.trust.store import TrustStore

    trust = TrustStore(sessions)
    audit_log = AuditLog.from_settings(sessions, AuditSettings())
    await audit_log.start()
    audit = RecordingAudit(audit_log)
    base = SmtpSubmissionSettings(**section)  # type: ignore[arg-type]
    auth_settings = AuthSettings(
        oidc=oidc,  # type: ignore[arg-type]
        ratelimit=RateLimitSettings(account=account_limits, ip=LENIENT),
    )
    settings = Settings(
        instance=InstanceSettings(hostname=SERVER_HOST),
        pki=pki.pki_settings(),
        # Port 0 (ephemeral) is not a valid configuration value; tests bypass validation for it.
        smtp_submission=base.model_copy(update={"starttls_port": 0, "implicit_tls_port": 0}),
        auth=auth_settings,
        policy=PolicySettings(auth=AuthPolicySettings(password_allowed_types=list(password_types))),
    )
    validator = CertificateValidator.from_settings(settings.pki)
    authenticator = Authenticator(
        store,
        policy=settings.policy,
        settings=auth_settings,
        tokens=BearerTokenValidator(auth_settings.oidc) if auth_settings.oidc is not None else None,
        limiter=MemoryRateLimiter(auth_settings.ratelimit),
    )
    metrics = Metrics(process=False)
    wakes: list[int] = []
    dsn = DsnSender(store)
    ports = SubmissionPorts(
        authenticator=authenticator,
        certificates=PkiClientVerifier(lambda: validator),
        local=StoreLocalRecipients(store),
        trust=TrustRecipients(trust),
        sink=StoreSubmissionSink(store, dsn, SERVER_HOST, lambda: wakes.append(1)),
        audit=audit,
        directory=directory or NoDirectoryMirror(),
        observer=MetricsObserver(metrics),
    )
    service = SubmissionSmtpService(settings, ports, submission_tls_context)
    await service.start()
    return World(
        service=service,
        store=store,
        sessions=sessions,
        pki=pki,
        certs=certs,
        audit=audit,
        audit_log=audit_log,
        metrics=metrics,
        authenticator=authenticator,
        settings=settings,
        wakes=wakes,
    )


async def stop_world(world: World) -> None:
    await world.service.stop(grace=2.0)
    await world.audit_log.stop()


def message(
    sender: str,
    recipients: list[str],
    *,
    subject: str = "Compte rendu",
    extra: bytes = b"",
    date: bool = False,
    message_id: bool = False,
) -> bytes:
    lines = [f"From: Dr Jean Martin <{sender}>", f"To: {', '.join(recipients)}", f"Subject: {subject}"]
    head = "\r\n".join(lines).encode() + b"\r\n"
    if date:
        head += b"Date: Sat, 21 Nov 2026 10:00:00 +0100\r\n"
    if message_id:
        head += b"Message-ID: <client-chosen@example.test>\r\n"
    return head + extra + b"\r\nBonjour,\r\nle compte rendu est en piece jointe.\r\n"
