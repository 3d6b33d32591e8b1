"""Authentication failure limits per client address and per account, in memory (one process).

Each key keeps the times of its recent failures (a sliding window). After `free_failures` failures
the key must wait `base_delay * 2**k` seconds (capped at `max_delay`) after its latest failure;
`max_failures` failures within the window lock it out for `lockout_seconds`. The table is bounded:
least recently used keys are dropped beyond `max_tracked_keys`, and stale keys are swept as new
ones arrive. Pure logic with an injectable clock; several server processes each keep their own.
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import NamedTuple, Protocol

from mssante_operator.config.models import RateLimitPolicy, RateLimitSettings

__all__ = ["KeyKind", "MemoryRateLimiter", "RateKey", "RateLimiter", "account_key", "ip_key"]

_MAX_EXPONENT = 60


class KeyKind(StrEnum):
    ACCOUNT = "account"
    IP = "ip"


class RateKey(NamedTuple):
    kind: KeyKind
    value: str


def ip_key(remote_ip: str) -> RateKey:
    """The key of a client address; IPv6 clients are grouped by /64 (one customer's prefix)."""
    try:
        address = ipaddress.ip_address(remote_ip.split("%", 1)[0])
    except ValueError:
        return RateKey(KeyKind.IP, remote_ip[:64])
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return RateKey(KeyKind.IP, str(address.ipv4_mapped))
        return RateKey(KeyKind.IP, str(ipaddress.IPv6Network((address, 64), strict=False)))
    return RateKey(KeyKind.IP, str(address))


def account_key(account: str) -> RateKey:
    """The key of an account name (address, national id or certificate), case-insensitive."""
    return RateKey(KeyKind.ACCOUNT, account.strip().lower()[:320])


class RateLimiter(Protocol):
    """What the Authenticator needs; another implementation could share state between processes."""

    def retry_after(self, keys: Iterable[RateKey]) -> float:
        """Seconds before any of these keys may try again (0: now)."""
        ...

    def record_failure(self, keys: Iterable[RateKey]) -> float:
        """Count a failure against every key; return the new wait."""
        ...

    def record_success(self, keys: Iterable[RateKey]) -> None:
        """Forget the failures of these keys."""
        ...


@dataclass
class _Entry:
    failures: deque[float] = field(default_factory=deque)
    locked_until: float = 0.0


class MemoryRateLimiter:
    """The in-process `RateLimiter`."""

    def __init__(
        self, settings: RateLimitSettings | None = None, *, clock: Callable[[], float] = time.monotonic
    ):
        self.settings = settings if settings is not None else RateLimitSettings()
        self._clock = clock
        self._entries: OrderedDict[RateKey, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def _policy(self, key: RateKey) -> RateLimitPolicy:
        return self.settings.account if key.kind is KeyKind.ACCOUNT else self.settings.ip

    def _prune(self, key: RateKey, entry: _Entry, now: float) -> None:
        horizon = now - self._policy(key).window_seconds
        while entry.failures and entry.failures[0] <= horizon:
            entry.failures.popleft()

    def _stale(self, key: RateKey, entry: _Entry, now: float) -> bool:
        self._prune(key, entry, now)
        return not entry.failures and entry.locked_until <= now

    def _wait(self, key: RateKey, entry: _Entry, now: float) -> float:
        self._prune(key, entry, now)
        if entry.locked_until > now:
            return entry.locked_until - now
        policy = self._policy(key)
        count = len(entry.failures) - policy.free_failures
        if count <= 0:
            return 0.0
        delay = min(policy.base_delay * 2.0 ** min(count - 1, _MAX_EXPONENT), policy.max_delay)
        return max(0.0, entry.failures[-1] + delay - now)

    def retry_after(self, keys: Iterable[RateKey]) -> float:
        now = self._clock()
        wait = 0.0
        for key in keys:
            entry = self._entries.get(key)
            if entry is not None:
                wait = max(wait, self._wait(key, entry, now))
        return wait

    def record_failure(self, keys: Iterable[RateKey]) -> float:
        now = self._clock()
        wait = 0.0
        for key in keys:
            entry = self._entries.get(key)
            if entry is None:
                entry = self._entries[key] = _Entry()
            else:
                self._entries.move_to_end(key)
            policy = self._policy(key)
            entry.failures.append(now)
            self._prune(key, entry, now)
            # Only the last max_failures times matter: the window count saturates there.
            while len(entry.failures) > policy.max_failures:
                entry.failures.popleft()
            if len(entry.failures) >= policy.max_failures:
                entry.locked_until = max(entry.locked_until, now + policy.lockout_seconds)
            wait = max(wait, self._wait(key, entry, now))
        self._sweep(now)
        return wait

    def record_success(self, keys: Iterable[RateKey]) -> None:
        for key in keys:
            self._entries.pop(key, None)

    def _sweep(self, now: float) -> None:
        # A few of the least recently failed keys per call: amortised cleanup without a timer task.
        for _ in range(4):
            if not self._entries:
                break
            key, entry = next(iter(self._entries.items()))
            if not self._stale(key, entry, now):
                break
            del self._entries[key]
        while len(self._entries) > self.settings.max_tracked_keys:
            self._entries.popitem(last=False)
