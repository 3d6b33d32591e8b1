"""What a delivery attempt means for a queue entry: recipient states, retry, expiry, DSNs. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from mssante_operator.relay.dsn import DsnAction, should_notify
from mssante_operator.relay.queue import QueueItem, RecipientResult
from mssante_operator.relay.schedule import RetrySchedule
from mssante_operator.store.models import QueueStatus, RecipientStatus


def status_for_reply(code: int) -> RecipientStatus:
    """2xx delivered, 4xx try again, anything else failed for good."""
    if 200 <= code < 300:
        return RecipientStatus.DELIVERED
    if 400 <= code < 500:
        return RecipientStatus.DEFERRED
    return RecipientStatus.FAILED


@dataclass(frozen=True)
class Settlement:
    status: QueueStatus
    next_attempt_at: datetime | None
    results: dict[int, RecipientResult]
    # Recipients to name in a DSN, by action; only those whose NOTIFY asks for it.
    notices: dict[DsnAction, list[int]] = field(default_factory=dict)
    delay_notified: bool = False


def settle(
    item: QueueItem,
    attempt: Mapping[int, RecipientResult],
    *,
    schedule: RetrySchedule,
    now: datetime,
    peer_handles_dsn: bool,
) -> Settlement:
    """Fold one attempt's per-recipient results into the entry's next state.

    `peer_handles_dsn`: the receiving MTA announced DSN, took our NOTIFY and will report success
    itself; otherwise a success is reported by us as "relayed".
    """
    results = dict(attempt)
    expired = schedule.expired(item.created_at, now)
    for recipient in item.pending_recipients:
        result = results.get(recipient.id)
        if result is None or result.status is RecipientStatus.DEFERRED:
            reply = result.reply if result else "not attempted"
            if expired:
                results[recipient.id] = RecipientResult(
                    RecipientStatus.FAILED, f"4.4.7 message expired after retries; last reply: {reply}"
                )
            else:
                results[recipient.id] = RecipientResult(RecipientStatus.DEFERRED, reply)

    notices: dict[DsnAction, list[int]] = {}
    for recipient in item.pending_recipients:
        status = results[recipient.id].status
        action: DsnAction | None = None
        if status is RecipientStatus.FAILED:
            action = DsnAction.FAILED
        elif status is RecipientStatus.DELIVERED and not peer_handles_dsn:
            action = DsnAction.RELAYED
        if action is not None and should_notify(
            item.mail_from, recipient.notify, action if action is DsnAction.FAILED else DsnAction.DELIVERED
        ):
            notices.setdefault(action, []).append(recipient.id)

    still_pending = [r for r in item.pending_recipients if results[r.id].status is RecipientStatus.DEFERRED]
    delay_notified = item.delay_notified
    if still_pending and schedule.delay_notice_due(item.created_at, now, item.delay_notified):
        delayed = [r.id for r in still_pending if should_notify(item.mail_from, r.notify, DsnAction.DELAYED)]
        if delayed:
            notices[DsnAction.DELAYED] = delayed
        delay_notified = True

    if still_pending:
        return Settlement(
            QueueStatus.PENDING,
            schedule.next_attempt(item.attempts + 1, item.created_at, now),
            results,
            notices,
            delay_notified,
        )
    statuses = {results[r.id].status for r in item.recipients if r.id in results} | {
        r.status for r in item.recipients if r.id not in results
    }
    final = QueueStatus.DONE if RecipientStatus.DELIVERED in statuses else QueueStatus.FAILED
    return Settlement(final, None, results, notices, delay_notified)
