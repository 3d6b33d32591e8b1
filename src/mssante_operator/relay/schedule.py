"""When to try a queued message again, when to warn its sender, when to give up. Pure functions."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta


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


def parse_duration(text: str) -> timedelta:
    """'90s', '5m', '4h', '5d' or a bare number of seconds."""
    value = text.strip().lower()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        if value and value[-1] in units:
            amount = float(value[:-1])
            seconds = amount * units[value[-1]]
        else:
            seconds = float(value)
    except ValueError:
        raise ValueError(f"not a duration (use e.g. 90s, 5m, 4h, 5d): {text!r}") from None
    if seconds <= 0:
        raise ValueError(f"duration must be positive: {text!r}")
    return timedelta(seconds=seconds)
