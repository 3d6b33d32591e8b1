"""The composition root of `mssante-operator serve`: what the process runs, in which order.

This is the only place that knows every package. To plug in a capability, add a few lines in
`build_application` at the marked place:

- a shared component: set its slot on `components` (see `ops.app.Components`);
- a background worker or listener: `app.add_service(SomeService(...))`; order matters, since
  services start in the order added and stop in reverse (workers before the front ends that
  feed them, so that front ends stop first and workers flush last);
- a health check: `app.health.add(check)` (see `ops.health`);
- a start-up check: `app.add_startup_check(check)` (raise `StartupError` to refuse to start).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from pathlib import Path

from prometheus_client import disable_created_metrics
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from mssante_operator.audit import AuditLog
from mssante_operator.auth import Authenticator
from mssante_operator.config import Settings
from mssante_operator.directory.decision import DirectoryPolicy
from mssante_operator.directory.mirror import DirectoryMirror, mirror_health
from mssante_operator.imap.service import ImapService
from mssante_operator.ops.adapters import (
    AuditAdapter,
    AuditRelayObserver,
    DirectoryListingAdapter,
    DirectoryService,
    DsnSender,
    GroupCommitSink,
    InboundTrust,
    OutboundTrust,
    PkiPeerVerifier,
    StoreRecipients,
    StoreSink,
    ValidatorHolder,
)
from mssante_operator.ops.app import Application, Components, StartupError
from mssante_operator.ops.health import (
    HealthCheck,
    HealthRegistry,
    HealthStatus,
    certificates_check,
    migrations_check,
    store_check,
)
from mssante_operator.ops.http import OpsHttpService
from mssante_operator.ops.logging import get_logger
from mssante_operator.ops.metrics import Metrics
from mssante_operator.ops.submission_wiring import build_submission_service
from mssante_operator.pki import CertificateValidator, PkiLoadError, client_tls_context, server_tls_context
from mssante_operator.pki.tls import ClientCertMode
from mssante_operator.relay.schedule import schedule_from_settings
from mssante_operator.relay.worker import RelayWorker
from mssante_operator.smtp.inbound import InboundPorts
from mssante_operator.smtp.service import InboundSmtpService
from mssante_operator.store import create_engine, session_factory
from mssante_operator.store.crypto import KeyFileError, MasterKey
from mssante_operator.store.groupcommit import DeliveryWriter
from mssante_operator.store.mailstore import MailStore
from mssante_operator.store.pgnotify import PgChangeRelay
from mssante_operator.store.summary_cache import SummaryCache
from mssante_operator.trust.refresher import TrustRefresher
from mssante_operator.trust.store import TrustStore, trust_health

log = get_logger(__name__)


def build_application(settings: Settings, config_path: Path | None = None) -> Application:
    """Wire the serve process from `settings`. `config_path` is what SIGHUP re-reads."""
    engine = create_engine(
        settings.store.url.get_secret_value(),
        pool_size=settings.store.pool_size,
        echo=settings.store.echo_sql,
    )
    components = Components(
        engine=engine,
        sessions=session_factory(engine),
        metrics=Metrics(),
        health=HealthRegistry(),
    )
    app = Application(settings, components, config_path=config_path)

    app.health.add(store_check(engine))
    app.health.add(migrations_check(engine))
    app.health.add(certificates_check(lambda: app.settings.pki))

    # --- shared components -------------------------------------------------------------------
    try:
        master_key = MasterKey.load(settings.store.master_key_file)
    except KeyFileError as exc:
        message = str(exc)

        async def master_key_unusable(_app: Application) -> None:
            raise StartupError(message)

        app.add_startup_check(master_key_unusable)
    else:
        components.mailstore = MailStore(
            components.sessions,
            master_key,
            summary_cache=SummaryCache(settings.store.summary_cache_mb * 2**20),
        )
    components.audit = AuditLog.from_settings(components.sessions, settings.audit)
    # First service added, last stopped: it flushes what the front ends recorded while stopping.
    app.add_service(components.audit)
    holder: ValidatorHolder | None = None
    try:
        holder = ValidatorHolder(CertificateValidator.from_settings(settings.pki))
    except PkiLoadError as exc:
        pki_message = str(exc)

        async def pki_unusable(_app: Application) -> None:
            raise StartupError(pki_message)

        app.add_startup_check(pki_unusable)
    else:
        components.validator = holder.current
        app.add_service(holder)

    trust_store = TrustStore(components.sessions)
    components.trust = trust_store
    app.add_service(TrustRefresher(components.sessions, settings, trust_store=trust_store))

    async def trust_list() -> HealthCheck:
        ok, detail = await trust_health(components.sessions, app.settings.trust.health_max_age_hours)
        return HealthCheck("trust_list", HealthStatus.OK if ok else HealthStatus.FAILING, detail)

    app.health.add(trust_list, name="trust_list")

    async def directory_mirror() -> HealthCheck:
        ok, detail = await mirror_health(components.sessions, app.settings.directory.max_age_days)
        # An old or missing mirror degrades decisions but does not stop mail: degraded, not failing.
        return HealthCheck("directory", HealthStatus.OK if ok else HealthStatus.DEGRADED, detail)

    app.health.add(directory_mirror, name="directory")
    d = settings.directory
    directory = DirectoryMirror(
        components.sessions,
        cache_size=d.cache_size,
        cache_ttl=d.cache_ttl_seconds,
        refresh_seconds=d.refresh_seconds,
        policy=DirectoryPolicy.from_settings(d),
    )
    components.directory = directory
    app.add_service(DirectoryService(directory))

    # --- workers and listeners ------------------------------------------------------------------
    wired: set[str] = set()
    authenticator: Authenticator | None = None
    mailstore = components.mailstore
    if mailstore is not None and holder is not None and components.audit is not None:
        audit = components.audit
        dsn = DsnSender(mailstore)
        if settings.relay.enabled:
            relay = _relay_worker(
                settings, components.sessions, mailstore, trust_store, holder, dsn, audit, components.metrics
            )
            dsn.on_queued = relay.wake
            app.add_service(relay)
        if settings.smtp_inbound.enabled:
            audit_adapter = AuditAdapter(audit, components.metrics)
            # Group commit: concurrent sessions' messages and their audit records share one
            # transaction and one fsync. Added before the listener, so it stops after it.
            writer = DeliveryWriter(mailstore, engine, master_key, journal=audit.journal)
            app.add_service(writer)
            ports = InboundPorts(
                peer_verifier=PkiPeerVerifier(holder),
                trust=InboundTrust(trust_store),
                directory=StoreRecipients(mailstore, directory),
                sink=StoreSink(mailstore, dsn, settings.instance.hostname),
                audit=audit_adapter,
                accepted=GroupCommitSink(writer, audit, audit_adapter, dsn, settings.instance.hostname),
            )
            app.add_service(InboundSmtpService(settings, ports, _inbound_tls_context))
            wired.add("smtp_inbound")
        # One authenticator, so submission and IMAP share its rate limits.
        authenticator = Authenticator.from_settings(settings, directory=mailstore)
        # --- smtp_submission ---
        if settings.smtp_submission.enabled:
            app.add_service(
                build_submission_service(
                    settings,
                    mailstore=mailstore,
                    validator=holder,
                    trust_store=trust_store,
                    audit=audit,
                    metrics=components.metrics,
                    dsn=dsn,
                    # The relay worker's wake-up (set just above when the relay is enabled).
                    wake_relay=dsn.on_queued,
                    authenticator=authenticator,
                    directory=DirectoryListingAdapter(directory),
                )
            )
            wired.add("smtp_submission")
        # --- end smtp_submission ---
    # --- imap ---
    if mailstore is not None and holder is not None and components.audit is not None:
        if engine.dialect.name == "postgresql":
            # Deliveries made by this process wake IMAP sessions of other processes at once.
            app.add_service(PgChangeRelay(settings.store.url.get_secret_value(), mailstore.changes))
        if settings.imap.enabled:
            if authenticator is None:
                authenticator = Authenticator.from_settings(settings, directory=mailstore)
            app.add_service(ImapService(settings, mailstore, authenticator, components.audit, holder))
            wired.add("imap")
    # --- end imap ---
    for section in ("smtp_inbound", "smtp_submission", "imap"):
        if getattr(settings, section).enabled and section not in wired:
            log.warning("listener enabled in the configuration but not in this version", section=section)

    # The operations endpoint last: it starts once everything it reports on is up, and it is the
    # first to stop, so that a load balancer sees the instance go away before the mail ports do.
    if settings.ops.enabled:
        app.add_service(
            OpsHttpService(
                settings.ops.host,
                settings.ops.port,
                app.health,
                app.metrics,
                instance=lambda: app.settings.instance.name,
                shutdown_timeout=min(settings.ops.shutdown_grace_seconds, 5.0),
            )
        )
    return app


def _inbound_tls_context(settings: Settings) -> ssl.SSLContext:
    mode: ClientCertMode = (
        "optional" if settings.smtp_inbound.tls_client_certificate == "request" else "required"
    )
    return server_tls_context(settings.pki, client_cert=mode)


def _relay_worker(
    settings: Settings,
    sessions: async_sessionmaker[AsyncSession],
    mailstore: MailStore,
    trust_store: TrustStore,
    validator: ValidatorHolder,
    dsn: DsnSender,
    audit: AuditLog,
    metrics: Metrics,
) -> RelayWorker:
    pki = settings.pki

    def client_context() -> ssl.SSLContext:
        context = client_tls_context(pki)
        # The peer's identity is its DN as bound to the recipient domain by the trust list
        # (checked by OutboundTrust); host names of transport-map routes are often IP addresses.
        context.check_hostname = False
        return context

    return RelayWorker(
        sessions=sessions,
        read_body=mailstore.read_queue_body,
        trust=OutboundTrust(trust_store, validator),
        send_dsn=dsn.send,
        tls_context=client_context,
        hostname=settings.instance.hostname,
        transport_map=settings.relay.transport,
        schedule=schedule_from_settings(settings.relay),
        observer=AuditRelayObserver(audit, metrics),
        concurrency=settings.relay.concurrency,
        poll_interval=settings.relay.poll_interval_seconds,
        command_timeout=settings.relay.command_timeout_seconds,
        connections_per_peer=settings.relay.connections_per_peer,
        connection_idle_timeout=settings.relay.connection_idle_seconds,
        connection_max_age=settings.relay.connection_max_age_seconds,
    )


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop when installed (the `fast` extra), else None for asyncio's default."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def serve(settings: Settings, config_path: Path | None = None) -> int:
    """Run the serve process in the foreground; returns the exit status.

    Raises StartupError when the process refuses to start.
    """

    # *_created series double every counter's series count for no use on our dashboards.
    disable_created_metrics()  # type: ignore[no-untyped-call]

    async def main() -> int:
        app = build_application(settings, config_path)
        return await app.run_forever()

    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        return runner.run(main())
