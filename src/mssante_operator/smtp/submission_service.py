"""The submission listeners (STARTTLS and implicit TLS) as a service `serve` can start, reload
and stop."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable

from mssante_operator.config.settings import Settings
from mssante_operator.ops.logging import get_logger
from mssante_operator.smtp.policy import SuspendedPolicy
from mssante_operator.smtp.submission import LISTENER, SubmissionSmtp
from mssante_operator.smtp.submission_ports import SubmissionObserver, SubmissionPolicy, SubmissionPorts
from mssante_operator.smtp.wire import MssSmtp, SessionRegistry, WireConfig

log = get_logger("mssante_operator.smtp.submission_service")

TlsContextFactory = Callable[[Settings], ssl.SSLContext]


class _ObservedRegistry(SessionRegistry):
    """Reports the number of open sessions (the sessions gauge) as it changes."""

    def __init__(self, observer: SubmissionObserver) -> None:
        super().__init__()
        self._observer = observer

    def add(self, session: MssSmtp) -> None:
        super().add(session)
        self._observer.sessions(len(self.sessions))

    def discard(self, session: MssSmtp) -> None:
        super().discard(session)
        self._observer.sessions(len(self.sessions))


def wire_config(settings: Settings) -> WireConfig:
    section = settings.smtp_submission
    return WireConfig(
        listener=LISTENER,
        hostname=settings.instance.hostname,
        max_message_size=section.max_message_size,
        max_line_length=section.max_line_length,
        max_header_count=section.max_header_count,
        max_recipients=section.max_recipients,
        max_bad_commands=section.max_bad_commands,
        max_connections=section.max_connections,
        idle_timeout=section.idle_timeout_seconds,
        data_timeout=section.data_timeout_seconds,
        ident="mssante-operator ESMTP submission",
    )


def submission_policy(settings: Settings) -> SubmissionPolicy:
    section = settings.smtp_submission
    return SubmissionPolicy(
        max_auth_failures=section.max_auth_failures,
        auth_failure_delay_max=section.auth_failure_delay_max_seconds,
        unlisted_recipient=section.unlisted_recipient,
        suspended=SuspendedPolicy(section.suspended_mailbox),
    )


def check_tls_context(context: ssl.SSLContext) -> None:
    """Client certificates must be asked for (EXTERNAL) but not required (token and password users)."""
    if context.verify_mode != ssl.CERT_OPTIONAL:
        raise ValueError(
            "the submission TLS context must request client certificates without requiring them "
            "(verify_mode CERT_OPTIONAL)"
        )
    if context.minimum_version == ssl.TLSVersion.MINIMUM_SUPPORTED:
        context.minimum_version = ssl.TLSVersion.TLSv1_2
    elif context.minimum_version < ssl.TLSVersion.TLSv1_2:
        raise ValueError("the submission TLS context allows TLS versions below 1.2")


class SubmissionSmtpService:
    """Listens on `[smtp_submission] host:starttls_port` (STARTTLS) and `host:implicit_tls_port`
    (implicit TLS). `tls_context_factory(settings)` builds the server context (CERT_OPTIONAL); it
    is called again on reload so that new certificates apply to new sessions."""

    name = LISTENER

    def __init__(
        self, settings: Settings, ports: SubmissionPorts, tls_context_factory: TlsContextFactory
    ) -> None:
        self._settings = settings
        self._ports = ports
        self._tls_factory = tls_context_factory
        self._registry = _ObservedRegistry(ports.observer)
        self._servers: dict[str, asyncio.Server] = {}
        self._config = wire_config(settings)
        self._policy = submission_policy(settings)
        self._tls_context = self._build_tls(settings)

    def _build_tls(self, settings: Settings) -> ssl.SSLContext:
        context = self._tls_factory(settings)
        check_tls_context(context)
        return context

    def _port_of(self, kind: str) -> int:
        server = self._servers.get(kind)
        if server is None or not server.sockets:
            raise RuntimeError("service is not started")
        return int(server.sockets[0].getsockname()[1])

    @property
    def starttls_port(self) -> int:
        return self._port_of("starttls")

    @property
    def implicit_tls_port(self) -> int:
        return self._port_of("implicit")

    @property
    def active_sessions(self) -> int:
        return len(self._registry.sessions)

    def _factory(self) -> SubmissionSmtp:
        return SubmissionSmtp(
            self._config,
            ports=self._ports,
            policy=self._policy,
            tls_context=self._tls_context,
            registry=self._registry,
        )

    async def start(self) -> None:
        # aiosmtpd logs every command line (AUTH payloads included) at INFO: keep it quiet.
        logging.getLogger("mail.log").setLevel(logging.WARNING)
        section = self._settings.smtp_submission
        self._registry.stopping = False
        loop = asyncio.get_running_loop()
        self._servers["starttls"] = await loop.create_server(
            self._factory, host=section.host, port=section.starttls_port
        )
        self._servers["implicit"] = await loop.create_server(
            self._factory, host=section.host, port=section.implicit_tls_port, ssl=self._tls_context
        )
        for kind, server in self._servers.items():
            for sock in server.sockets:
                host, port = sock.getsockname()[:2]
                log.info("listening", service=self.name, address=f"{host}:{port}", tls=kind)

    async def stop(self, grace: float) -> None:
        """Stop accepting; idle sessions get 421 now, sessions in a transaction get `grace` seconds."""
        self._registry.stopping = True
        for server in self._servers.values():
            server.close()
        await self._registry.drain(grace, self.name)
        for server in self._servers.values():
            await server.wait_closed()
        self._servers = {}
        log.info("stopped", service=self.name)

    async def reload(self, settings: Settings) -> None:
        """New settings and TLS context for new sessions. The implicit TLS socket is bound with its
        context, so it is re-bound on the same address (open sessions go on); changing a bind
        address needs a restart."""
        tls_context = self._build_tls(settings)
        self._settings = settings
        self._config = wire_config(settings)
        self._policy = submission_policy(settings)
        self._tls_context = tls_context
        old = self._servers.get("implicit")
        if old is not None and old.sockets:
            # The bound port: the configured one, or the ephemeral one a test asked for with 0.
            port = int(old.sockets[0].getsockname()[1])
            host = settings.smtp_submission.host
            old.close()
            loop = asyncio.get_running_loop()
            self._servers["implicit"] = await loop.create_server(
                self._factory, host=host, port=port, ssl=tls_context
            )
        log.info("reloaded", service=self.name)
