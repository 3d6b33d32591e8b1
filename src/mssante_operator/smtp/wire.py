"""The asyncio wire layer shared by the SMTP listeners: an aiosmtpd `SMTP` subclass.

aiosmtpd drives the connection, the command loop and STARTTLS. This class replaces what does
not meet our bar:

- MAIL/RCPT: aiosmtpd refuses every RFC 3461 parameter (RET, ENVID, NOTIFY, ORCPT); we parse
  with `address` + `dsn` and answer with enhanced status codes.
- DATA: aiosmtpd 1.4.6 reads lines up to CRLF and silently keeps a bare LF or bare CR inside
  the message (`\\n.\\n` passes through as content), which a downstream server may take as the
  end of data (SMTP smuggling). We read with the sans-IO `DataReader`, which refuses such a
  message after its real end.
- Every reply carries an enhanced status code (ENHANCEDSTATUSCODES is advertised), including
  aiosmtpd's own generic replies, which `push` completes.
- The STARTTLS guard answers "530 5.7.0" (aiosmtpd's has no enhanced code) and is audited.
- Bad-command budget, idle and DATA timeouts with a 421, and graceful shutdown.

Subclasses (the inbound listener; later submission) implement `mail_decision`,
`rcpt_decision` and `deliver`, and may extend `ehlo_keywords`.
"""

from __future__ import annotations

import asyncio
import collections
import re
import ssl
import traceback
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.smtp import SMTP, TLSSetupException

from mssante_operator.ops.logging import get_logger
from mssante_operator.smtp.address import Address, PathError, parse_mail_from, parse_rcpt_to
from mssante_operator.smtp.data import DataLimits, DataReader, DataResult
from mssante_operator.smtp.dsn import (
    MailParams,
    ParamError,
    ParamOptions,
    parse_mail_params,
    parse_rcpt_params,
    size_exceeded_reply,
)
from mssante_operator.smtp.policy import data_start_decision
from mssante_operator.smtp.ports import PeerInfo, PeerVerdict, RecipientSpec
from mssante_operator.smtp.replies import (
    BYE,
    NEED_EHLO,
    NEED_MAIL,
    NESTED_MAIL,
    OK,
    RESET_OK,
    SHUTTING_DOWN,
    STARTTLS_REQUIRED,
    TLS_ALREADY_ACTIVE,
    TOO_MANY_CONNECTIONS,
    TOO_MANY_ERRORS,
    Decision,
    SmtpReply,
)

log = get_logger("mssante_operator.smtp")

# RFC 3207 4: what a client may do before STARTTLS when TLS is mandatory.
ALLOWED_BEFORE_STARTTLS = frozenset({"NOOP", "EHLO", "STARTTLS", "QUIT"})
_HAS_ENHANCED = re.compile(r"^\d{3}[ -][245]\.\d{1,3}\.\d{1,3}(?: |$)")
_DEFAULT_ENHANCED = {500: "5.5.2", 501: "5.5.4", 502: "5.5.1", 503: "5.5.1", 504: "5.5.4", 530: "5.7.0"}
_DATA_CHUNK = 256 * 1024
# Replies that count against the bad-command budget.
_BAD_COMMAND_CODES = frozenset({500, 501, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class WireConfig:
    """Per-listener settings the wire layer needs (built from the configuration)."""

    listener: str
    hostname: str
    max_message_size: int
    max_line_length: int = 1000
    max_header_count: int = 500
    max_recipients: int = 100
    max_bad_commands: int = 20
    max_connections: int = 500
    idle_timeout: float = 300.0
    data_timeout: float = 600.0
    require_tls: bool = True
    ident: str = "mssante-operator ESMTP"

    def data_limits(self) -> DataLimits:
        return DataLimits(
            max_size=self.max_message_size,
            max_line_length=self.max_line_length,
            max_header_count=self.max_header_count,
        )

    def param_options(self) -> ParamOptions:
        return ParamOptions(max_size=self.max_message_size)


@dataclass(frozen=True, slots=True)
class TlsState:
    version: str | None
    cipher: str | None
    bits: int | None
    peer_certificate_der: bytes | None


@dataclass(slots=True)
class Transaction:
    """One mail transaction: MAIL FROM, the accepted recipients, and their parameters."""

    sender: Address | None
    params: MailParams
    recipients: list[RecipientSpec] = field(default_factory=list)

    @property
    def mail_from(self) -> str:
        return "" if self.sender is None else str(self.sender)


class SessionRegistry:
    """Live sessions of one listener, for connection limits and graceful shutdown."""

    def __init__(self) -> None:
        self.sessions: set[MssSmtp] = set()
        self.stopping = False
        self._empty = asyncio.Event()
        self._empty.set()

    def add(self, session: MssSmtp) -> None:
        self.sessions.add(session)
        self._empty.clear()

    def discard(self, session: MssSmtp) -> None:
        self.sessions.discard(session)
        if not self.sessions:
            self._empty.set()

    async def wait_empty(self, grace: float) -> bool:
        try:
            await asyncio.wait_for(self._empty.wait(), grace)
        except TimeoutError:
            return False
        return True

    async def drain(self, grace: float, service: str) -> None:
        """Graceful stop: idle sessions get 421 now, sessions in a transaction get `grace` seconds,
        then whatever is left is aborted."""
        self.stopping = True
        for session in list(self.sessions):
            session.close_if_idle()
        if not await self.wait_empty(grace):
            remaining = list(self.sessions)
            log.warning("grace period over, closing sessions", service=service, sessions=len(remaining))
            for session in remaining:
                session.abort()
            await self.wait_empty(5.0)


class _NoHooks:
    """aiosmtpd wants a handler object; every command is implemented on the protocol itself."""


class MssSmtp(SMTP):
    """Base SMTP session with strict parsing, enhanced codes and the smuggling-safe DATA reader."""

    # Room for ESMTP parameters (RFC 3461: ORCPT may add 500 octets, ENVID 100) on command lines
    # (aiosmtpd uses it as the StreamReader's line limit).
    line_length_limit = 2048

    def __init__(
        self,
        config: WireConfig,
        *,
        tls_context: ssl.SSLContext | None,
        registry: SessionRegistry,
    ) -> None:
        super().__init__(
            _NoHooks(),
            data_size_limit=config.max_message_size,
            enable_SMTPUTF8=False,
            decode_data=False,
            hostname=config.hostname,
            ident=config.ident,
            tls_context=tls_context,
            # Our own guard below gives the 530 an enhanced code and audits it.
            require_starttls=False,
            timeout=config.idle_timeout,
            auth_require_tls=True,
        )
        self.config = config
        self.registry = registry
        self.session_id = uuid.uuid4().hex[:12]
        self.command_size_limits = collections.defaultdict(lambda: 512, {"MAIL": 1024, "RCPT": 1100})
        self.tls: TlsState | None = None
        self.peer_verdict: PeerVerdict | None = None
        self.transaction: Transaction | None = None
        self.helo: str | None = None
        self.peer_ip = "unknown"
        self.peer_port = 0
        self._bad_commands = 0
        self._refused_at_connect = False
        self._implicit_tls = False
        self._tls_checked = True
        self._busy = False
        self._closing = False
        self._log = log.bind(listener=config.listener, session=self.session_id)
        for name, method in list(self._smtp_methods.items()):
            if name not in ALLOWED_BEFORE_STARTTLS:
                self._smtp_methods[name] = self._guarded(name, method)

    # -- hooks for subclasses -----------------------------------------------------------

    async def mail_decision(self, sender: Address | None, params: MailParams) -> Decision:
        raise NotImplementedError

    async def rcpt_decision(self, recipient: Address, spec: RecipientSpec) -> Decision:
        raise NotImplementedError

    async def deliver(self, transaction: Transaction, result: DataResult) -> SmtpReply:
        """Store an accepted message; return the final reply (250 only once it is durable)."""
        raise NotImplementedError

    async def refused(self, stage: str, decision: Decision, **details: Any) -> None:
        """A refusal worth recording (audit, metrics). Default: log it."""
        self._log.info("refused", stage=stage, reason=decision.reason, reply=str(decision.reply))

    async def after_tls(self) -> None:
        """TLS is up (STARTTLS, or implicit TLS on the first command); `self.tls` is set.
        Subclasses validate the peer certificate here."""

    def param_options(self) -> ParamOptions:
        """Which MAIL/RCPT parameters this listener accepts (submission adds AUTH=)."""
        return self.config.param_options()

    def ehlo_keywords(self) -> list[str]:
        keywords = [f"SIZE {self.config.max_message_size}", "8BITMIME", "PIPELINING", "ENHANCEDSTATUSCODES"]
        keywords.append("DSN")
        if self.tls_context is not None and not self.tls_active:
            keywords.append("STARTTLS")
        return keywords

    # -- state ------------------------------------------------------------------------------

    @property
    def tls_active(self) -> bool:
        return self.tls is not None and (self._tls_protocol is not None or self._implicit_tls)

    def peer_info(self) -> PeerInfo:
        tls = self.tls
        return PeerInfo(
            ip=self.peer_ip,
            port=self.peer_port,
            helo=self.helo,
            tls_version=tls.version if tls else None,
            tls_cipher=tls.cipher if tls else None,
            tls_bits=tls.bits if tls else None,
            subject_dn=self.peer_verdict.subject_dn if self.peer_verdict else None,
        )

    def _set_rset_state(self) -> None:
        super()._set_rset_state()  # type: ignore[no-untyped-call]
        self.transaction = None

    # -- connection ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self._original_transport is None and self.transport is None
        if first:
            peer = transport.get_extra_info("peername")
            if isinstance(peer, tuple) and len(peer) >= 2:
                self.peer_ip, self.peer_port = str(peer[0]), int(peer[1])
            if self.registry.stopping or len(self.registry.sessions) >= self.config.max_connections:
                self._refused_at_connect = True
                self.transport = transport
                reply = SHUTTING_DOWN if self.registry.stopping else TOO_MANY_CONNECTIONS
                if isinstance(transport, asyncio.WriteTransport):
                    transport.write(str(reply).encode("ascii") + b"\r\n")
                transport.close()
                self._log.warning("connection refused", peer=self.peer_ip, reply=str(reply))
                return
            self.registry.add(self)
            self._log = self._log.bind(peer=self.peer_ip)
            self._log.debug("connected")
            ssl_object = transport.get_extra_info("ssl_object")
            if ssl_object is not None:  # implicit TLS (submission on 465): no STARTTLS
                self._implicit_tls = True
                self.tls = _tls_state(ssl_object)
                self._tls_checked = False
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        self.registry.discard(self)
        if self._refused_at_connect:
            self.transport = None
            asyncio.StreamReaderProtocol.connection_lost(self, error)
            return
        super().connection_lost(error)

    def _timeout_cb(self) -> None:
        self._log.info("timeout, closing")
        if self.transport is not None and not self.transport.is_closing():
            self._writer.write(b"421 4.4.2 Timeout, closing connection\r\n")
        super()._timeout_cb()  # type: ignore[no-untyped-call]

    def close_if_idle(self) -> bool:
        """Shutdown: close now with 421 unless a transaction is under way. True if closed."""
        self._closing = True
        if self._busy or self.transaction is not None or self.transport is None:
            return False
        self._close_with(SHUTTING_DOWN)
        return True

    def abort(self) -> None:
        if self.transport is not None:
            self._close_with(SHUTTING_DOWN)

    def _close_with(self, reply: SmtpReply) -> None:
        transport = self.transport
        if transport is None:
            return
        if not transport.is_closing():
            self._writer.write(str(reply).encode("ascii") + b"\r\n")
        transport.close()

    # -- replies -------------------------------------------------------------------------

    async def push(self, status: str | bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            # aiosmtpd's loop may still reply after it closed the connection (too many
            # unrecognized commands); writing to a closed TLS transport would raise.
            return
        text = status.decode("utf-8", "replace") if isinstance(status, bytes) else status
        code = int(text[:3]) if text[:3].isdigit() else 0
        if code and code not in (220, 354) and not _HAS_ENHANCED.match(text):
            enhanced = _DEFAULT_ENHANCED.get(code, f"{str(code)[0]}.0.0")
            text = f"{text[:4]}{enhanced} {text[4:]}"
        await super().push(text)
        if code in _BAD_COMMAND_CODES:
            self._bad_commands += 1
            if self._bad_commands >= self.config.max_bad_commands and self.transport is not None:
                await super().push(str(TOO_MANY_ERRORS))
                self._log.warning("too many bad commands, closing", count=self._bad_commands)
                if self.transport is not None:
                    self.transport.close()

    async def reply(self, reply: SmtpReply) -> None:
        lines = reply.lines()
        for line in lines[:-1]:
            await super().push(line)
        await self.push(lines[-1])

    async def handle_exception(self, error: Exception) -> str:
        # Never show internals to the peer; the log has the traceback.
        # The traceback without local variables: those may hold message content.
        trace = "".join(traceback.format_exception(error))
        self._log.error("session error", error=repr(error), traceback=trace)
        return "451 4.3.0 Local error, try again later"

    # -- commands -----------------------------------------------------------------------

    def _guarded(self, name: str, method: Callable[[str | None], Awaitable[None]]) -> Callable[..., Any]:
        async def guarded(arg: str | None) -> None:
            if not self._tls_checked:
                self._tls_checked = True
                await self.after_tls()
            if self.config.require_tls and not self.tls_active:
                await self.reply(STARTTLS_REQUIRED)
                if name in ("MAIL", "RCPT", "DATA", "AUTH"):
                    await self.refused(name.lower(), Decision.refuse(STARTTLS_REQUIRED, "starttls_required"))
                return
            self._busy = True
            try:
                await method(arg)
            finally:
                self._busy = False
                if self._closing and self.transaction is None:
                    self._close_with(SHUTTING_DOWN)

        # aiosmtpd's HELP reads these attributes.
        for attr in ("__smtp_syntax__", "__smtp_syntax_extended__", "__smtp_syntax_when__"):
            if hasattr(method, attr):
                setattr(guarded, attr, getattr(method, attr))
        return guarded

    async def smtp_EHLO(self, hostname: str | None) -> None:
        if not hostname:
            await self.reply(SmtpReply(501, "5.5.4", "Syntax: EHLO hostname"))
            return
        self._set_rset_state()
        assert self.session is not None
        self.session.extended_smtp = True
        self.session.host_name = hostname
        self.helo = hostname
        lines = [f"{self.hostname} Hello {hostname[:100]}", *self.ehlo_keywords()]
        for index, line in enumerate(lines):
            sep = " " if index == len(lines) - 1 else "-"
            await super().push(f"250{sep}{line}")

    async def smtp_HELO(self, hostname: str | None) -> None:
        if not hostname:
            await self.reply(SmtpReply(501, "5.5.4", "Syntax: HELO hostname"))
            return
        self._set_rset_state()
        assert self.session is not None
        self.session.extended_smtp = False
        self.session.host_name = hostname
        self.helo = hostname
        await super().push(f"250 {self.hostname}")

    async def smtp_NOOP(self, arg: str | None) -> None:
        await self.reply(OK)

    async def smtp_RSET(self, arg: str | None) -> None:
        if arg:
            await self.reply(SmtpReply(501, "5.5.4", "Syntax: RSET"))
            return
        self._set_rset_state()
        await self.reply(RESET_OK)

    async def smtp_QUIT(self, arg: str | None) -> None:
        await self.reply(BYE)
        assert self._handler_coroutine is not None
        self._handler_coroutine.cancel()
        assert self.transport is not None
        self.transport.close()

    async def smtp_VRFY(self, arg: str | None) -> None:
        await self.reply(
            SmtpReply(252, "2.5.0", "Cannot VRFY; send the message and it will be delivered or bounced")
        )

    async def smtp_STARTTLS(self, arg: str | None) -> None:
        if self.tls_active:
            await self.reply(TLS_ALREADY_ACTIVE)
            return
        if arg:
            await self.reply(SmtpReply(501, "5.5.4", "Syntax: STARTTLS"))
            return
        if self.tls_context is None:
            await self.reply(SmtpReply(454, "4.7.0", "TLS not available"))
            return
        try:
            await self._start_tls(self.tls_context)
        except TLSSetupException as exc:
            reason = _tls_failure_reason(exc)
            self._log.info("TLS handshake failed", reason=reason)
            await self.refused(
                "tls",
                Decision.refuse(
                    SmtpReply(554, "5.7.0", f"TLS handshake failed: {reason}"), "tls_handshake_failed"
                ),
            )
            raise
        # connection_made() ran again for the TLS transport: RFC 3207 4.2, forget everything.
        self.helo = None
        self.transaction = None
        ssl_object = self.transport.get_extra_info("ssl_object") if self.transport is not None else None
        self.tls = _tls_state(ssl_object)
        self._log.debug("TLS established", version=self.tls.version, cipher=self.tls.cipher)
        await self.after_tls()

    async def _start_tls(self, context: ssl.SSLContext) -> None:
        """aiosmtpd's STARTTLS, through `loop.start_tls`: on uvloop the TLS layer is then uvloop's
        compiled one instead of asyncio's pure-Python SSLProtocol, which cost a tenth of the
        CPU of every message (a TLS record per reply line)."""
        await super().push("220 Ready to start TLS")
        transport = self.transport
        assert transport is not None
        loop = asyncio.get_running_loop()
        self._original_transport = transport
        # RFC 3207 4.2: nothing sent in clear after STARTTLS is taken as a command.
        reader_buffer = getattr(self._reader, "_buffer", None)
        if isinstance(reader_buffer, bytearray):
            reader_buffer.clear()
        try:
            tls_transport = await loop.start_tls(
                transport,  # type: ignore[arg-type]
                self,
                context,
                server_side=True,
                ssl_handshake_timeout=self.config.idle_timeout,
            )
        except asyncio.CancelledError:
            raise
        except Exception as error:
            raise TLSSetupException() from error
        if tls_transport is None:  # the loop found the connection closed meanwhile
            raise TLSSetupException() from ConnectionResetError("connection closed during the handshake")
        # What aiosmtpd's connection_made does once its own SSLProtocol has shaken hands, without
        # clearing the reader: the peer's first command may already be in it.
        started = _StartedTls(tls_transport)
        self._tls_protocol = started  # type: ignore[assignment]  # aiosmtpd's "TLS is on"
        self._set_rset_state()
        self.session = self._create_session()
        self.session.peer = tls_transport.get_extra_info("peername")
        self.session.ssl = started._extra
        self._reset_timeout()
        self._reader._transport = tls_transport  # type: ignore[attr-defined]
        self._writer._transport = tls_transport  # type: ignore[attr-defined]
        self.transport = tls_transport
        self._tls_handshake_okay = True

    async def smtp_MAIL(self, arg: str | None) -> None:
        if not self.helo:
            await self.reply(NEED_EHLO)
            return
        if self.transaction is not None:
            await self.reply(NESTED_MAIL)
            return
        try:
            sender, tokens = parse_mail_from(arg)
            assert self.session is not None
            if tokens and not self.session.extended_smtp:
                raise ParamError(SmtpReply(501, "5.5.4", "MAIL parameters need EHLO, not HELO"))
            params = parse_mail_params(tokens, self.param_options())
        except (PathError, ParamError) as exc:
            await self.reply(exc.reply)
            await self.refused("mail", Decision.refuse(exc.reply, "syntax"), mail_from=arg)
            return
        decision = await self.mail_decision(sender, params)
        if decision.allowed:
            self.transaction = Transaction(sender=sender, params=params)
        else:
            await self.refused("mail", decision, mail_from="" if sender is None else str(sender))
        await self.reply(decision.reply)

    async def smtp_RCPT(self, arg: str | None) -> None:
        if not self.helo:
            await self.reply(NEED_EHLO)
            return
        transaction = self.transaction
        if transaction is None:
            await self.reply(NEED_MAIL)
            return
        try:
            recipient, tokens = parse_rcpt_to(arg)
            assert self.session is not None
            if tokens and not self.session.extended_smtp:
                raise ParamError(SmtpReply(501, "5.5.4", "RCPT parameters need EHLO, not HELO"))
            params = parse_rcpt_params(tokens, self.param_options())
        except (PathError, ParamError) as exc:
            await self.reply(exc.reply)
            await self.refused("rcpt", Decision.refuse(exc.reply, "syntax"), recipient=arg)
            return
        spec = RecipientSpec(address=str(recipient), params=params)
        if any(r.address.lower() == spec.address.lower() for r in transaction.recipients):
            # Accepted once already: deliver once.
            await self.reply(SmtpReply(250, "2.1.5", "Recipient ok (duplicate ignored)"))
            return
        decision = await self.rcpt_decision(recipient, spec)
        if decision.allowed:
            transaction.recipients.append(spec)
        else:
            await self.refused("rcpt", decision, mail_from=transaction.mail_from, recipient=str(recipient))
        await self.reply(decision.reply)

    async def smtp_DATA(self, arg: str | None) -> None:
        if not self.helo:
            await self.reply(NEED_EHLO)
            return
        if arg:
            await self.reply(SmtpReply(501, "5.5.4", "Syntax: DATA"))
            return
        transaction = self.transaction
        if transaction is None:
            await self.reply(NEED_MAIL)
            return
        start = data_start_decision(len(transaction.recipients))
        if not start.allowed:
            await self.reply(start.reply)
            return
        await self.reply(start.reply)
        try:
            result = await self._read_data(DataReader(self.config.data_limits()))
        except asyncio.CancelledError:
            raise
        except _DataCutOff as cut:
            self._log.warning("DATA far beyond the size limit, closing")
            await self.refused(
                "data",
                Decision.refuse(cut.reply, "size_exceeded"),
                mail_from=transaction.mail_from,
                recipients=tuple(r.address for r in transaction.recipients),
            )
            self._close_with(cut.reply)
            return
        except Exception as exc:
            # Never go back to reading commands from the middle of a message: its remaining
            # lines would be taken for commands.
            self._log.error("error while reading DATA, closing", error=repr(exc))
            self._close_with(SmtpReply(421, "4.3.0", "Local error while receiving the message, closing"))
            return
        if result is None:  # connection lost mid-DATA: nothing was accepted
            return
        try:
            if not result.ok:
                assert result.reply is not None
                await self.refused(
                    "data",
                    Decision.refuse(result.reply, result.reason),
                    mail_from=transaction.mail_from,
                    recipients=tuple(r.address for r in transaction.recipients),
                    size=result.size,
                )
                await self.reply(result.reply)
                return
            final = await self.deliver(transaction, result)
            await self.reply(final)
        finally:
            self._set_rset_state()

    async def _read_data(self, reader: DataReader) -> DataResult | None:
        """Feed the DataReader with whatever the socket delivers. Octets after the end-of-data
        line are pipelined commands: they go back to the front of the StreamReader's buffer,
        where aiosmtpd's command loop reads next."""
        stream = self._reader
        loop = asyncio.get_running_loop()
        drain_limit = 2 * self.config.max_message_size + 1024 * 1024
        self._reset_timeout(self.config.data_timeout)
        last_reset = loop.time()
        while not reader.done:
            chunk: bytes = await stream.read(_DATA_CHUNK)
            if not chunk:
                self._log.info("connection closed during DATA")
                if self.transport is not None:
                    self.transport.close()
                return None
            used = reader.feed(chunk)
            if used < len(chunk):
                _unread(stream, chunk[used:])
            if not reader.done and reader.wire_octets > drain_limit:
                # RFC 5321 wants the reply after the end of data, but not at any cost: a peer
                # still sending at twice the limit is cut off.
                reply = size_exceeded_reply(self.config.max_message_size)
                raise _DataCutOff(
                    SmtpReply(reply.code, reply.enhanced, reply.text + "; closing the connection")
                )
            now = loop.time()
            if now - last_reset > 1.0:
                self._reset_timeout(self.config.data_timeout)
                last_reset = now
        self._reset_timeout()
        return reader.result

    async def smtp_AUTH(self, arg: str | None) -> None:
        await self.reply(SmtpReply(503, "5.5.1", "AUTH is not offered on this listener"))

    async def smtp_EXPN(self, arg: str | None) -> None:
        await self.reply(SmtpReply(502, "5.5.1", "EXPN is not implemented"))


class _StartedTls:
    """Stands for aiosmtpd's SSLProtocol once `loop.start_tls` has wrapped the connection."""

    def __init__(self, transport: asyncio.BaseTransport) -> None:
        self._extra = {
            "ssl_object": transport.get_extra_info("ssl_object"),
            "peercert": transport.get_extra_info("peercert"),
            "cipher": transport.get_extra_info("cipher"),
            "compression": transport.get_extra_info("compression"),
            "sslcontext": transport.get_extra_info("sslcontext"),
        }


class _DataCutOff(Exception):
    def __init__(self, reply: SmtpReply) -> None:
        super().__init__(str(reply))
        self.reply = reply


def _tls_state(ssl_object: object) -> TlsState:
    if not isinstance(ssl_object, ssl.SSLObject | ssl.SSLSocket):
        return TlsState(None, None, None, None)
    cipher = ssl_object.cipher()
    return TlsState(
        version=ssl_object.version(),
        cipher=cipher[0] if cipher else None,
        bits=cipher[2] if cipher else None,
        peer_certificate_der=ssl_object.getpeercert(binary_form=True),
    )


def _unread(stream: asyncio.StreamReader, data: bytes) -> None:
    # asyncio has no public "unread"; aiosmtpd itself manipulates `_buffer` (STARTTLS). Fail loudly
    # rather than lose pipelined commands if that internal ever changes.
    buffer = getattr(stream, "_buffer", None)
    if not isinstance(buffer, bytearray):
        raise RuntimeError("asyncio.StreamReader has no _buffer bytearray: cannot keep pipelined commands")
    buffer[0:0] = data


def _tls_failure_reason(exc: TLSSetupException) -> str:
    """What went wrong in the handshake, in words a peer's admin can act on."""
    cause = exc.__cause__
    if isinstance(cause, ssl.SSLCertVerificationError):
        return f"client certificate verification failed: {cause.verify_message}"
    if isinstance(cause, ssl.SSLError):
        reason = (cause.reason or cause.__class__.__name__).lower().replace("_", " ")
        return reason
    return str(cause) if cause is not None else "handshake failed"
