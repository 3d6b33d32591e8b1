"""The IMAP listeners of `serve`: STARTTLS and implicit TLS, over the mail store.

Each connection gets a `Session` (the sans-IO core), a `StoreBackend` and the reference driver
(`imap.driver.serve_connection`). TLS is 1.2 or later; a client certificate is asked for but
optional: when it passes `CertificateValidator` (usage TLS_CLIENT) the session offers SASL
EXTERNAL, otherwise passwords (where the mailbox type allows them) or bearer tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable
from typing import Any

from mssante_operator import __version__
from mssante_operator.audit import AuditLog
from mssante_operator.auth import Authenticator, Mechanism
from mssante_operator.config.settings import Settings
from mssante_operator.imap import response as r
from mssante_operator.imap.backend import ConnectionInfo
from mssante_operator.imap.driver import DriverConfig, serve_connection
from mssante_operator.imap.notify import FolderWatcher
from mssante_operator.imap.session import Session, SessionConfig
from mssante_operator.imap.storage import StoreBackend
from mssante_operator.ops import tlsbuffers
from mssante_operator.ops.listener import TcpListener, TrackedProtocol
from mssante_operator.ops.logging import get_logger
from mssante_operator.pki import CertificateValidator, Usage, peer_certificate, server_tls_context
from mssante_operator.pki.identity import CertificateIdentity
from mssante_operator.store.mailstore import MailStore

__all__ = ["ImapService", "imap_tls_context", "session_config"]

log = get_logger(__name__)

TlsContextFactory = Callable[[Settings], ssl.SSLContext]


def imap_tls_context(settings: Settings) -> ssl.SSLContext:
    """TLS 1.2+, our server certificate, a client certificate asked for but optional."""
    return server_tls_context(settings.pki, client_cert="optional")


def append_limit(settings: Settings) -> int:
    return settings.imap.append_limit or settings.smtp_inbound.max_message_size


def session_config(settings: Settings, *, starttls: bool) -> SessionConfig:
    """What the session offers, in line with `auth.advertised_mechanisms`."""
    bearer = (Mechanism.OAUTHBEARER.value, Mechanism.XOAUTH2.value) if settings.auth.oidc is not None else ()
    return SessionConfig(
        starttls=starttls,
        allow_passwords=bool(settings.policy.auth.password_allowed_types),
        bearer_mechanisms=bearer,
        append_limit=append_limit(settings),
        multiappend_limit=settings.imap.multiappend_limit,
        multiappend_max_messages=settings.imap.multiappend_max_messages,
        max_bad_commands=settings.imap.max_bad_commands,
        max_auth_failures=settings.imap.max_auth_failures,
        server_name=settings.instance.hostname,
        version=__version__,
    )


def driver_config(settings: Settings) -> DriverConfig:
    section = settings.imap
    return DriverConfig(
        autologout=section.autologout_seconds,
        command_timeout=section.command_timeout_seconds,
        idle_timeout=section.idle_timeout_seconds,
    )


class _Connection(TrackedProtocol, asyncio.StreamReaderProtocol):
    """A stream protocol that says BYE when the server stops (see `ops.listener.TcpListener`)."""

    def __init__(self, service: ImapService, implicit: bool) -> None:
        self._service = service
        self._writer: asyncio.StreamWriter | None = None
        reader = asyncio.StreamReader(limit=2**16)
        super().__init__(reader, self._connected)
        self._implicit = implicit
        # asyncio's empty deque allocates a 64-slot block (~700 B a connection, thousands in
        # IDLE); drain waiters are appended, removed and iterated, which a list does as well.
        self._drain_waiters: Any = []

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        await self._service.handle(reader, writer, implicit=self._implicit)

    def begin_shutdown(self) -> None:
        writer = self._writer
        if writer is None or writer.is_closing():
            return
        with contextlib.suppress(Exception):
            writer.write(r.untagged("BYE", "server shutting down"))
            writer.close()


class ImapService:
    """`[imap] host:starttls_port` (STARTTLS, LOGINDISABLED before it) and `host:implicit_tls_port`."""

    name = "imap"

    def __init__(
        self,
        settings: Settings,
        store: MailStore,
        authenticator: Authenticator,
        audit: AuditLog | None,
        validator: Callable[[], CertificateValidator],
        *,
        tls_context_factory: TlsContextFactory = imap_tls_context,
        watcher: FolderWatcher | None = None,
    ) -> None:
        self._settings = settings
        self.store = store
        self.authenticator = authenticator
        self.audit = audit
        self._validator = validator
        self._tls_factory = tls_context_factory
        self._tls = tls_context_factory(settings)
        # The implicit-TLS socket keeps the context it was bound with; switching each handshake
        # to the current one (SNI callback) makes reloaded certificates apply without a rebind.
        self._listen_tls = tls_context_factory(settings)
        self._listen_tls.sni_callback = self._use_current_context
        self.watcher = watcher or FolderWatcher(store, settings.imap.change_poll_seconds or None)
        self._listeners: list[TcpListener] = []
        self._configs: dict[tuple[int, bool], tuple[Settings, SessionConfig]] = {}
        self._driver: tuple[Settings, DriverConfig] | None = None

    def _use_current_context(self, sslobj: ssl.SSLObject, _name: str | None, _ctx: ssl.SSLContext) -> None:
        if self._tls is not self._listen_tls:
            sslobj.context = self._tls

    @property
    def starttls_port(self) -> int:
        return self._bound(0)

    @property
    def implicit_tls_port(self) -> int:
        return self._bound(1)

    def _bound(self, index: int) -> int:
        if len(self._listeners) <= index or not self._listeners[index].addresses:
            raise RuntimeError("service is not started")
        return int(self._listeners[index].addresses[0].rsplit(":", 1)[1])

    @property
    def active_connections(self) -> int:
        return sum(listener.active for listener in self._listeners)

    async def start(self) -> None:
        # Thousands of mostly idle TLS connections: not 256 KiB of receive buffer each.
        tlsbuffers.install()
        section = self._settings.imap
        starttls = TcpListener(
            self.name, section.host, section.starttls_port, lambda: _Connection(self, False), tls="starttls"
        )
        implicit = TcpListener(
            self.name,
            section.host,
            section.implicit_tls_port,
            lambda: _Connection(self, True),
            ssl_context=self._listen_tls,
            tls="implicit",
            ssl_handshake_timeout=30.0,
        )
        await starttls.start()
        try:
            await implicit.start()
        except BaseException:
            await starttls.stop(0)
            raise
        self._listeners = [starttls, implicit]
        await self.watcher.start()

    async def stop(self, grace: float) -> None:
        listeners, self._listeners = self._listeners, []
        await asyncio.gather(*(listener.stop(grace) for listener in listeners))
        await self.watcher.stop()

    async def reload(self, settings: Settings) -> None:
        """New certificates, limits and mechanisms apply to new connections; ports need a restart."""
        try:
            tls = self._tls_factory(settings)
        except Exception as exc:
            log.error("IMAP TLS context unusable on reload; keeping the previous one", error=str(exc))
            return
        self._settings = settings
        self._tls = tls
        self.watcher.poll_interval = settings.imap.change_poll_seconds or None
        log.info("reloaded", service=self.name)

    # -- one connection --------------------------------------------------------------------------

    def _session_config(self, settings: Settings, implicit: bool) -> SessionConfig:
        """Shared by every connection made under the same settings (immutable): one object, not
        one per session, with thousands of sessions in IDLE."""
        key = (id(settings), implicit)
        cached = self._configs.get(key)
        if cached is None or cached[0] is not settings:
            cached = (settings, session_config(settings, starttls=not implicit))
            self._configs = {k: v for k, v in self._configs.items() if v[0] is settings}
            self._configs[key] = cached
        return cached[1]

    def _driver_config(self, settings: Settings) -> DriverConfig:
        cached = self._driver
        if cached is None or cached[0] is not settings:
            cached = self._driver = (settings, driver_config(settings))
        return cached[1]

    def client_identity(self, writer: asyncio.StreamWriter) -> CertificateIdentity | None:
        """The identity of a client certificate that passes `CertificateValidator`, else None."""
        cert = peer_certificate(writer.get_extra_info("ssl_object"))
        if cert is None:
            return None
        result = self._validator().validate(cert, usage=Usage.TLS_CLIENT)
        if not result.ok:
            log.info("imap client certificate refused", reason=result.detail)
            return None
        return result.identity

    def _conn_info(self, writer: asyncio.StreamWriter, backend: StoreBackend) -> ConnectionInfo:
        identity = self.client_identity(writer)
        backend.tls_identity = identity
        return ConnectionInfo(
            _peer(writer),
            tls=True,
            client_cert_verified=identity is not None,
            client_cert_subject=identity.subject_dn if identity is not None else None,
        )

    async def handle(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, implicit: bool
    ) -> None:
        settings = self._settings
        backend = StoreBackend(
            self.store, self.authenticator, self.audit, self.watcher, append_limit=append_limit(settings)
        )
        try:
            conn = self._conn_info(writer, backend) if implicit else ConnectionInfo(_peer(writer))
            session = Session(backend, conn, self._session_config(settings, implicit))
            await serve_connection(
                reader,
                writer,
                session,
                tls_context=None if implicit else self._tls,
                conn_after_tls=lambda w: self._conn_info(w, backend),
                wait_for_change=backend.wait_for_change,
                config=self._driver_config(settings),
            )
        except Exception:
            log.exception("imap connection failed")
        finally:
            backend.close()
            if not writer.is_closing():
                writer.close()


def _peer(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) else str(peer)
