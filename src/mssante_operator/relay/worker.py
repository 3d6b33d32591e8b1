"""Delivery workers: claim due queue entries and hand them to the recipient domain's operator.

Every connection is STARTTLS with this operator's certificate as client certificate; the peer's
certificate must pass `OutboundTrust.check_peer` (IGC-Santé chain, CRL, DN bound to the recipient
domain in the trust list) before a single envelope command is sent. A peer that fails any check
gets nothing: the entry is deferred and retried (the peer may fix its certificate) until expiry.

A session that passed those checks is kept open for the next entries to the same peer
(`relay.connections`): each reuse checks the trust list binding of that entry's domain again and
starts with RSET; chain and CRL are checked again on the next new connection (at most
`connection_max_age` later).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

import aiosmtplib
import dns.asyncresolver
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from mssante_operator.config import Settings
from mssante_operator.ops.logging import get_logger
from mssante_operator.relay.connections import PeerConnection, PeerConnections
from mssante_operator.relay.dsn import DsnAction, DsnRecipient, DsnReport, build_dsn
from mssante_operator.relay.outcome import Settlement, settle, status_for_reply
from mssante_operator.relay.queue import (
    AttemptRecord,
    QueuedRecipient,
    QueueItem,
    RecipientResult,
    any_due,
    claim_due,
    record_attempts,
)
from mssante_operator.relay.routing import RouteHop, RoutingError, resolve_route
from mssante_operator.relay.schedule import RetrySchedule, schedule_from_settings
from mssante_operator.store.models import RecipientStatus

log = get_logger("mssante_operator.relay")


@dataclass(frozen=True)
class TrustVerdict:
    allowed: bool
    reason: str
    peer_subject: str | None = None


class OutboundTrust(Protocol):
    """The trust-space checks the relay needs (adapted from the `trust` and `pki` packages)."""

    async def domain_allowed(self, domain: str) -> TrustVerdict: ...

    async def check_peer(self, domain: str, peer_der: bytes | None) -> TrustVerdict: ...

    async def check_binding(self, domain: str, peer_subject: str) -> TrustVerdict:
        """The trust list's binding of `domain` to an already validated peer DN (cached sessions)."""
        ...


class RelayObserver(Protocol):
    """Told of every recipient outcome (audit trail, metrics)."""

    def recipient_outcome(
        self, item: QueueItem, recipient: QueuedRecipient, result: RecipientResult, peer: str | None
    ) -> None: ...


@dataclass(frozen=True)
class HopResult:
    """What one connection achieved: per-recipient results, or a connection-level failure."""

    results: dict[int, RecipientResult]
    peer: str | None
    peer_handles_dsn: bool
    connection_error: str | None = None
    # MAIL..end of DATA on the session (no wait for a slot or a new session): the peer's share.
    transaction_ms: float = 0.0


def xtext(value: str) -> str:
    """RFC 3461 xtext encoding for ENVID and ORCPT."""
    return "".join(f"+{ord(c):02X}" if (c in "+=" or not 33 <= ord(c) <= 126) else c for c in value)


def _reply(code: int, message: str) -> str:
    return f"{code} {message}".strip()


class RelayWorker:
    """The outbound queue's delivery loop, one per process (several processes on PostgreSQL)."""

    name = "relay"

    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        read_body: Callable[[int], Awaitable[bytes]],
        trust: OutboundTrust,
        send_dsn: Callable[[str, bytes], Awaitable[None]],
        tls_context: Callable[[], ssl.SSLContext],
        hostname: str,
        transport_map: Mapping[str, str] | None = None,
        schedule: RetrySchedule | None = None,
        resolver: dns.asyncresolver.Resolver | None = None,
        observer: RelayObserver | None = None,
        worker_id: str | None = None,
        concurrency: int = 20,
        poll_interval: float = 5.0,
        lease: timedelta = timedelta(minutes=10),
        command_timeout: float = 60.0,
        connections_per_peer: int = 5,
        connection_idle_timeout: float = 10.0,
        connection_max_age: float = 300.0,
    ) -> None:
        self._sessions = sessions
        self._read_body = read_body
        self._trust = trust
        self._send_dsn = send_dsn
        self._tls_context = tls_context
        self.hostname = hostname
        self.transport_map: Mapping[str, str] = dict(transport_map or {})
        self.schedule = schedule or RetrySchedule()
        self._resolver = resolver
        self._observer = observer
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}"
        self._concurrency = asyncio.Semaphore(concurrency)
        self._batch = concurrency
        self._poll_interval = poll_interval
        self._lease = lease
        self._timeout = command_timeout
        self._wakeup = asyncio.Event()
        self._stopping = False
        self._loop_task: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self._tls: ssl.SSLContext | None = None
        self._more = False
        self._recorder = _GroupRecorder(sessions, self.worker_id)
        self._connections = PeerConnections(
            per_peer=connections_per_peer,
            idle_timeout=connection_idle_timeout,
            max_age=connection_max_age,
        )

    @property
    def connections(self) -> PeerConnections:
        return self._connections

    # -- service --------------------------------------------------------------------------

    async def start(self) -> None:
        self._stopping = False
        self._loop_task = asyncio.create_task(self._loop(), name="relay-loop")
        log.info("relay started", worker=self.worker_id, routes=len(self.transport_map))

    async def stop(self, grace: float) -> None:
        self._stopping = True
        self._wakeup.set()
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        if self._inflight:
            _done, pending = await asyncio.wait(self._inflight, timeout=grace)
            for task in pending:
                task.cancel()
            # A cancelled delivery keeps its lease and is retried by whoever holds the queue next.
            await asyncio.gather(*pending, return_exceptions=True)
        await self._connections.close_all()

    async def reload(self, settings: Settings) -> None:
        """Routes and the retry schedule apply from the next attempt."""
        self.transport_map = dict(settings.relay.transport)
        self.schedule = schedule_from_settings(settings.relay)
        self._connections.idle_timeout = settings.relay.connection_idle_seconds
        self._connections.max_age = settings.relay.connection_max_age_seconds
        # New connections take a fresh TLS context (certificates may have been renewed); cached
        # sessions keep theirs until they expire (at most connection_max_age).
        self._tls = None
        log.info("relay reloaded", routes=len(self.transport_map))

    def wake(self) -> None:
        """New work was queued in this process: look now instead of at the next poll."""
        self._wakeup.set()

    async def _loop(self) -> None:
        while not self._stopping:
            # Cleared before looking, so that a wake-up during the look is not lost.
            self._wakeup.clear()
            try:
                claimed = await self.run_once(wait=False, probe=True)
            except Exception:
                log.exception("relay loop error")
                claimed = 0
            self._connections.expire()
            if claimed:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout=self._poll_interval)

    async def run_once(self, *, wait: bool = True, now: datetime | None = None, probe: bool = False) -> int:
        """Claim what is due and start delivering it; with `wait`, return when all is done.

        `probe`: look with a plain read first, and claim (a write transaction) only if something
        is due; the loop's polls do so.
        """
        free = self._batch - len(self._inflight)
        if free <= 0:
            return 0
        if probe and not await any_due(self._sessions, now=now or datetime.now(UTC)):
            return 0
        items = await claim_due(
            self._sessions,
            worker=self.worker_id,
            now=now or datetime.now(UTC),
            limit=free,
            lease=self._lease,
        )
        tasks = []
        for item in items:
            task = asyncio.create_task(self._guarded(item), name=f"relay-{item.queue_id}")
            self._inflight.add(task)
            task.add_done_callback(self._finished)
            tasks.append(task)
        # A full batch may have left due entries behind: look again as soon as a slot frees.
        self._more = len(items) == free
        if wait and tasks:
            await asyncio.gather(*tasks)
        return len(items)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        if self._more:
            self._wakeup.set()

    async def _guarded(self, item: QueueItem) -> None:
        async with self._concurrency:
            try:
                await self.deliver(item)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("relay delivery crashed", queue_id=item.queue_id, entry=item.id)

    # -- one entry ------------------------------------------------------------------------

    async def deliver(self, item: QueueItem, now: datetime | None = None) -> Settlement:
        started = time.perf_counter()
        queued_ms = (datetime.now(UTC) - item.created_at).total_seconds() * 1e3
        send_ms = transaction_ms = 0.0
        pending = item.pending_recipients
        domain = item.recipient_domain
        peer: str | None = None
        peer_handles_dsn = False
        results: dict[int, RecipientResult] = {}

        verdict = await self._trust.domain_allowed(domain)
        if not verdict.allowed:
            reply = f"550 5.7.1 recipient domain {domain} refused: {verdict.reason}"
            results = {r.id: RecipientResult(RecipientStatus.FAILED, reply) for r in pending}
        else:
            try:
                hops = await resolve_route(domain, self.transport_map, resolver=self._resolver)
            except RoutingError as exc:
                code = "550 5.4.4" if exc.permanent else "451 4.4.3"
                status = RecipientStatus.FAILED if exc.permanent else RecipientStatus.DEFERRED
                results = {r.id: RecipientResult(status, f"{code} {exc}") for r in pending}
                hops = []
            errors: list[str] = []
            body: bytes | None = None
            for hop in hops:
                if body is None:
                    body = await self._read_body(item.id)
                sending = time.perf_counter()
                attempt = await self._send_via(hop, item, pending, body)
                send_ms += (time.perf_counter() - sending) * 1e3
                if attempt.connection_error is not None:
                    errors.append(f"{hop.host}:{hop.port}: {attempt.connection_error}")
                    continue
                results, peer, peer_handles_dsn = attempt.results, attempt.peer, attempt.peer_handles_dsn
                transaction_ms = attempt.transaction_ms
                break
            else:
                if hops:
                    reply = "451 4.4.1 no usable peer: " + "; ".join(errors)
                    results = {r.id: RecipientResult(RecipientStatus.DEFERRED, reply) for r in pending}

        when = now or datetime.now(UTC)
        settlement = settle(
            item, results, schedule=self.schedule, now=when, peer_handles_dsn=peer_handles_dsn
        )
        for recipient in pending:
            if self._observer is not None:
                self._observer.recipient_outcome(item, recipient, settlement.results[recipient.id], peer)
        dsn_ids = await self._notify(item, settlement, when)
        errors_text = "; ".join(
            sorted(
                {r.reply for r in settlement.results.values() if r.status is not RecipientStatus.DELIVERED}
            )
        )
        await self._recorder.record(
            AttemptRecord(
                item.id,
                settlement.results,
                settlement.status,
                settlement.next_attempt_at,
                errors_text or None,
                settlement.delay_notified,
                dsn_ids,
            )
        )
        log.info(
            "relay attempt",
            queue_id=item.queue_id,
            domain=domain,
            peer=peer,
            status=settlement.status.value,
            delivered=sum(r.status is RecipientStatus.DELIVERED for r in settlement.results.values()),
            deferred=sum(r.status is RecipientStatus.DEFERRED for r in settlement.results.values()),
            failed=sum(r.status is RecipientStatus.FAILED for r in settlement.results.values()),
            next_attempt=settlement.next_attempt_at.isoformat() if settlement.next_attempt_at else None,
            # Where the time went: since queued (first attempt), waiting for a session and the
            # peer's transaction (send), the transaction alone, the whole attempt.
            queued_ms=round(queued_ms, 1) if item.attempts == 0 else None,
            send_ms=round(send_ms, 1),
            transaction_ms=round(transaction_ms, 1),
            attempt_ms=round((time.perf_counter() - started) * 1e3, 1),
        )
        return settlement

    async def _notify(self, item: QueueItem, settlement: Settlement, now: datetime) -> list[int]:
        """Send the DSNs the settlement calls for; return the recipients whose final DSN went out."""
        if not settlement.notices:
            return []
        by_id = {r.id: r for r in item.recipients}
        original = await self._read_body(item.id)
        sent: list[int] = []
        for action, ids in settlement.notices.items():
            report = DsnReport(
                reporting_mta=self.hostname,
                sender=item.mail_from,
                arrival_date=item.created_at,
                envid=item.envid,
                ret=item.ret,
                original_message=original,
                recipients=[
                    DsnRecipient(
                        final_recipient=by_id[i].address,
                        original_recipient=by_id[i].orcpt,
                        action=action,
                        status=_status_code(settlement.results[i].reply, action),
                        diagnostic=settlement.results[i].reply,
                        last_attempt=now,
                        will_retry_until=(item.created_at + self.schedule.give_up_after)
                        if action is DsnAction.DELAYED
                        else None,
                    )
                    for i in ids
                ],
            )
            message = build_dsn(report, now=now, message_id_domain=self.hostname)
            await self._send_dsn(item.mail_from, message)
            if action is not DsnAction.DELAYED:
                sent.extend(ids)
        return sent

    async def _send_via(
        self, hop: RouteHop, item: QueueItem, recipients: Sequence[QueuedRecipient], body: bytes
    ) -> HopResult:
        key = (hop.host, hop.port)
        async with self._connections.slot(key):
            conn, error = await self._session_for(hop, item)
            if conn is None:
                return HopResult({}, None, False, connection_error=error)
            keep = False
            try:
                begun = time.perf_counter()
                result, keep = await self._transaction(conn, hop, item, recipients, body)
                return dataclasses.replace(result, transaction_ms=(time.perf_counter() - begun) * 1e3)
            finally:
                # Back to the cache before the caller's commit, so the next entry can use it now.
                if keep:
                    self._connections.put(conn)
                else:
                    self._connections.drop(conn)

    async def _session_for(self, hop: RouteHop, item: QueueItem) -> tuple[PeerConnection | None, str]:
        """A verified session to `hop` for this entry: a cached one still alive, else a new one."""
        key = (hop.host, hop.port)
        while (conn := self._connections.take(key)) is not None:
            try:
                # The certificate was checked when this connection was opened; the trust list may
                # have changed since, and it binds the DN to *this entry's* domain: checked again.
                verdict = await self._trust.check_binding(item.recipient_domain, conn.subject)
                if not verdict.allowed:
                    self._connections.drop(conn)
                    return None, f"peer certificate refused: {verdict.reason}"
                # The peer may have closed it meanwhile (its own idle timeout): RSET tells, and
                # starts the transaction from a clean state.
                await conn.client.rset(timeout=min(self._timeout, 10.0))
            except (aiosmtplib.SMTPException, OSError, TimeoutError):
                self._connections.drop(conn)
                continue
            except BaseException:
                self._connections.drop(conn)
                raise
            return conn, ""
        return await self._open(hop, item)

    async def _open(self, hop: RouteHop, item: QueueItem) -> tuple[PeerConnection | None, str]:
        client = aiosmtplib.SMTP(
            hostname=hop.host,
            port=hop.port,
            local_hostname=self.hostname,
            start_tls=False,
            use_tls=False,
            timeout=self._timeout,
        )
        try:
            await client.connect()
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            client.close()
            return None, f"connect failed: {exc}"
        conn = PeerConnection((hop.host, hop.port), client, "", self._connections.now())
        try:
            await client.ehlo()
            if not client.supports_extension("starttls"):
                self._connections.drop(conn)
                return None, "peer does not offer STARTTLS"
            try:
                await client.starttls(tls_context=self._client_context(), server_hostname=hop.host)
            except (aiosmtplib.SMTPException, ssl.SSLError, OSError) as exc:
                self._connections.drop(conn)
                return None, f"TLS handshake failed: {exc}"
            ssl_object = client.get_transport_info("ssl_object")
            der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
            verdict = await self._trust.check_peer(item.recipient_domain, der)
            if not verdict.allowed:
                self._connections.drop(conn)
                return None, f"peer certificate refused: {verdict.reason}"
            conn.subject = verdict.peer_subject or hop.host
            await client.ehlo()
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            self._connections.drop(conn)
            return None, f"session failed: {exc}"
        except BaseException:
            self._connections.drop(conn)
            raise
        self._connections.opened_one()
        return conn, ""

    async def _transaction(
        self,
        conn: PeerConnection,
        hop: RouteHop,
        item: QueueItem,
        recipients: Sequence[QueuedRecipient],
        body: bytes,
    ) -> tuple[HopResult, bool]:
        """One MAIL..DATA transaction; the flag says whether the session is fit for the next one."""
        client, peer = conn.client, conn.subject
        try:
            dsn = client.supports_extension("dsn")
            mail_options = []
            if client.supports_extension("size"):
                mail_options.append(f"SIZE={len(body)}")
            if client.supports_extension("8bitmime") and any(b > 127 for b in body):
                mail_options.append("BODY=8BITMIME")
            if dsn:
                if item.ret:
                    mail_options.append(f"RET={item.ret}")
                if item.envid:
                    mail_options.append(f"ENVID={xtext(item.envid)}")
            await client.mail(item.mail_from, options=mail_options)
            results: dict[int, RecipientResult] = {}
            accepted: list[QueuedRecipient] = []
            keep = True
            for recipient in recipients:
                options = []
                if dsn:
                    if recipient.notify:
                        options.append(f"NOTIFY={recipient.notify}")
                    if recipient.orcpt:
                        kind, _, addr = recipient.orcpt.partition(";")
                        options.append(f"ORCPT={kind};{xtext(addr)}")
                try:
                    rcpt = await client.rcpt(recipient.address, options=options)
                except aiosmtplib.SMTPRecipientRefused as exc:
                    results[recipient.id] = RecipientResult(
                        status_for_reply(exc.code), _reply(exc.code, exc.message)
                    )
                    # 421: the peer is closing the session.
                    keep = keep and exc.code != 421
                    continue
                accepted.append(recipient)
                results[recipient.id] = RecipientResult(
                    RecipientStatus.DEFERRED, _reply(rcpt.code, rcpt.message)
                )
            if accepted:
                try:
                    response = await client.data(body)
                    status = RecipientStatus.DELIVERED
                    text = _reply(response.code, response.message)
                except aiosmtplib.SMTPDataError as exc:
                    status, text = status_for_reply(exc.code), _reply(exc.code, exc.message)
                    keep = False
                for recipient in accepted:
                    results[recipient.id] = RecipientResult(status, text)
            elif keep:
                await client.rset()
            return HopResult(results, peer, dsn), keep
        except aiosmtplib.SMTPResponseException as exc:  # MAIL refused, or a reply out of place
            status = status_for_reply(exc.code)
            text = _reply(exc.code, exc.message)
            return HopResult({r.id: RecipientResult(status, text) for r in recipients}, peer, False), False
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            return HopResult({}, None, False, connection_error=f"session failed: {exc}"), False

    def _client_context(self) -> ssl.SSLContext:
        # Loading the CA bundle and our key pair costs milliseconds: once per worker (and reload).
        if self._tls is None:
            self._tls = self._tls_context()
        return self._tls


class _GroupRecorder:
    """Attempt outcomes written by one task, as many per transaction as have arrived meanwhile:
    concurrent deliveries share a commit (an fsync each on SQLite) instead of queueing for the
    write lock one by one, which also delays the next claims."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], worker: str) -> None:
        self._sessions = sessions
        self._worker = worker
        self._pending: list[tuple[AttemptRecord, asyncio.Future[bool]]] = []
        self._task: asyncio.Task[None] | None = None

    async def record(self, record: AttemptRecord) -> bool:
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append((record, future))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="relay-record")
        # Shielded: a delivery cancelled at shutdown still gets its outcome written.
        return await asyncio.shield(future)

    async def _run(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            records = [record for record, _ in batch]
            try:
                outcomes = await record_attempts(self._sessions, records, worker=self._worker)
            except Exception:
                # One bad record must not lose the others: each on its own.
                outcomes = []
                for record, future in batch:
                    try:
                        outcomes.extend(await record_attempts(self._sessions, [record], worker=self._worker))
                    except Exception as exc:
                        outcomes.append(False)
                        if not future.done():
                            future.set_exception(exc)
            for (_, future), ok in zip(batch, outcomes, strict=True):
                if not future.done():
                    future.set_result(ok)


def _status_code(reply: str, action: DsnAction) -> str:
    """The enhanced status code in a reply text, else a generic one for the action."""
    for token in reply.split()[:3]:
        parts = token.split(".")
        if len(parts) == 3 and all(p.isdigit() for p in parts) and parts[0] in "245":
            return token
    return {DsnAction.FAILED: "5.0.0", DsnAction.DELAYED: "4.0.0"}.get(action, "2.0.0")
