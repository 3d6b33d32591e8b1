"""The inbound inter-operator SMTP listener as a service `serve` can start, reload and stop."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable

from mssante_operator.config.settings import Settings
from mssante_operator.ops.logging import get_logger
from mssante_operator.smtp.inbound import LISTENER, InboundPolicy, InboundPorts, InboundSmtp
from mssante_operator.smtp.policy import ClosedPolicy, SuspendedPolicy
from mssante_operator.smtp.wire import SessionRegistry, WireConfig

log = get_logger("mssante_operator.smtp.service")

TlsContextFactory = Callable[[Settings], ssl.SSLContext]


def wire_config(settings: Settings) -> WireConfig:
    section = settings.smtp_inbound
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
    )


def inbound_policy(settings: Settings) -> InboundPolicy:
    section = settings.smtp_inbound
    return InboundPolicy(
        suspended=SuspendedPolicy(section.suspended_mailbox), closed=ClosedPolicy(section.closed_mailbox)
    )


def check_tls_context(context: ssl.SSLContext) -> None:
    """Refuse a server context that would not ask peers for a certificate, or allows old TLS."""
    if context.verify_mode == ssl.CERT_NONE:
        raise ValueError(
            "the inbound TLS context does not request client certificates (verify_mode CERT_NONE); "
            "inter-operator SMTP needs mutual TLS"
        )
    if (
        context.minimum_version < ssl.TLSVersion.TLSv1_2
        and context.minimum_version != ssl.TLSVersion.MINIMUM_SUPPORTED
    ):
        raise ValueError("the inbound TLS context allows TLS versions below 1.2")
    if context.minimum_version == ssl.TLSVersion.MINIMUM_SUPPORTED:
        context.minimum_version = ssl.TLSVersion.TLSv1_2


class InboundSmtpService:
    """Listens on `[smtp_inbound] host:port`; STARTTLS and a client certificate are mandatory.

    `tls_context_factory(settings)` builds the server context (the pki package's
    `server_tls_context`, CERT_OPTIONAL or CERT_REQUIRED per `tls_client_certificate`); it is
    called again on reload so that new certificates and CRLs apply to new sessions.
    """

    name = LISTENER

    def __init__(
        self, settings: Settings, ports: InboundPorts, tls_context_factory: TlsContextFactory
    ) -> None:
        self._settings = settings
        self._ports = ports
        self._tls_factory = tls_context_factory
        self._registry = SessionRegistry()
        self._server: asyncio.Server | None = None
        self._config = wire_config(settings)
        self._policy = inbound_policy(settings)
        self._tls_context = self._build_tls(settings)

    def _build_tls(self, settings: Settings) -> ssl.SSLContext:
        context = self._tls_factory(settings)
        check_tls_context(context)
        return context

    @property
    def sockets_addresses(self) -> list[tuple[str, int]]:
        if self._server is None:
            return []
        return [(str(s.getsockname()[0]), int(s.getsockname()[1])) for s in self._server.sockets]

    @property
    def port(self) -> int:
        """The bound port (useful when configured as 0)."""
        addresses = self.sockets_addresses
        if not addresses:
            raise RuntimeError("service is not started")
        return addresses[0][1]

    @property
    def active_sessions(self) -> int:
        return len(self._registry.sessions)

    def _factory(self) -> InboundSmtp:
        return InboundSmtp(
            self._config,
            ports=self._ports,
            policy=self._policy,
            tls_context=self._tls_context,
            registry=self._registry,
        )

    async def start(self) -> None:
        # aiosmtpd logs every command line (AUTH payloads included) at INFO: keep it quiet.
        logging.getLogger("mail.log").setLevel(logging.WARNING)
        section = self._settings.smtp_inbound
        self._registry.stopping = False
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._factory, host=section.host, port=section.port)
        for host, port in self.sockets_addresses:
            log.info("listening", service=self.name, address=f"{host}:{port}", tls="starttls")

    async def stop(self, grace: float) -> None:
        """Stop accepting; idle sessions get 421 now, sessions in a transaction get `grace` seconds."""
        self._registry.stopping = True
        if self._server is not None:
            self._server.close()
        await self._registry.drain(grace, self.name)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        log.info("stopped", service=self.name)

    async def reload(self, settings: Settings) -> None:
        """Apply new settings to new sessions; rebind if the address changed."""
        tls_context = self._build_tls(settings)
        old = self._settings.smtp_inbound
        self._settings = settings
        self._config = wire_config(settings)
        self._policy = inbound_policy(settings)
        self._tls_context = tls_context
        new = settings.smtp_inbound
        if self._server is not None and (old.host, old.port) != (new.host, new.port):
            old_server = self._server
            self._server = None
            old_server.close()
            await self.start()
            await old_server.wait_closed()
        log.info("reloaded", service=self.name)
