"""When to try a queued message again, when to warn its sender, when to give up. Pure functions."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from mssante_operator.config.models import RelaySettings, parse_duration

__all__ = ["RetrySchedule", "parse_duration", "schedule_from_settings"]


@dataclass(frozen=True)
class RetrySchedule:
    """Retry intervals after each failed attempt, then `repeat` forever until `give_up_after`.

    The default follows common MTA practice: 5 min, 15 min, 30 min, 1 h, then hourly, for 5 days,
    with a delay notice to the sender after 4 hours.
    """

    intervals: tuple[timedelta, ...] = (
        timedelta(minutes=5),
        timedelta(minutes=15),
        timedelta(minutes=30),
        timedelta(hours=1),
    )
    repeat: timedelta = timedelta(hours=1)
    give_up_after: timedelta = timedelta(days=5)
    delay_notice_after: timedelta = timedelta(hours=4)

    def __post_init__(self) -> None:
        if any(i <= timedelta(0) for i in (*self.intervals, self.repeat)):
            raise ValueError("retry intervals must be positive")
        if self.give_up_after <= timedelta(0):
            raise ValueError("give_up_after must be positive")

    def interval_after(self, failed_attempts: int) -> timedelta:
        """The wait after the `failed_attempts`-th failure (1-based)."""
        if failed_attempts < 1:
            raise ValueError("failed_attempts starts at 1")
        if failed_attempts <= len(self.intervals):
            return self.intervals[failed_attempts - 1]
        return self.repeat

    def next_attempt(self, failed_attempts: int, queued_at: datetime, now: datetime) -> datetime | None:
        """When to try again after a temporary failure, or None when the message has expired."""
        expires = queued_at + self.give_up_after
        if now >= expires:
            return None
        return min(now + self.interval_after(failed_attempts), expires)

    def expired(self, queued_at: datetime, now: datetime) -> bool:
        return now >= queued_at + self.give_up_after

    def delay_notice_due(self, queued_at: datetime, now: datetime, already_sent: bool) -> bool:
        return not already_sent and now - queued_at >= self.delay_notice_after


def schedule_from_settings(relay: RelaySettings) -> RetrySchedule:
    return RetrySchedule(
        intervals=tuple(parse_duration(v) for v in relay.retry_intervals),
        repeat=parse_duration(relay.retry_repeat),
        give_up_after=parse_duration(relay.give_up_after),
        delay_notice_after=parse_duration(relay.delay_notice_after),
    )
