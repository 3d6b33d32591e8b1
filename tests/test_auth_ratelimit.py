"""The in-memory failure limiter: growth, cap, lockout, reset, independent keys, bounded memory."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mssante_operator.auth.ratelimit import KeyKind, MemoryRateLimiter, RateKey, account_key, ip_key
from mssante_operator.config.models import RateLimitPolicy, RateLimitSettings


class Clock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


POLICY = RateLimitPolicy(
    max_failures=6, free_failures=1, window_seconds=600, base_delay=1, max_delay=8, lockout_seconds=300
)
SETTINGS = RateLimitSettings(account=POLICY, ip=POLICY, max_tracked_keys=10)
ALICE = account_key("Alice@H.test")


def _limiter() -> tuple[MemoryRateLimiter, Clock]:
    clock = Clock()
    return MemoryRateLimiter(SETTINGS, clock=clock), clock


def test_keys() -> None:
    assert account_key(" Jean@H.TEST ") == RateKey(KeyKind.ACCOUNT, "jean@h.test")
    assert ip_key("192.0.2.7") == RateKey(KeyKind.IP, "192.0.2.7")
    assert (
        ip_key("2001:db8:1:2:3:4:5:6")
        == ip_key("2001:db8:1:2:ffff::1")
        == RateKey(KeyKind.IP, "2001:db8:1:2::/64")
    )
    assert ip_key("::ffff:192.0.2.7") == ip_key("192.0.2.7")
    assert ip_key("fe80::1%eth0").value == "fe80::/64"
    assert ip_key("not-an-ip").value == "not-an-ip"


def test_delays_grow_and_cap() -> None:
    limiter, clock = _limiter()
    waits = []
    for _ in range(5):
        waits.append(limiter.record_failure([ALICE]))
        clock.now += 0.01
    # One free failure, then 1, 2, 4, 8 (capped at max_delay).
    assert waits == [0.0, 1.0, 2.0, 4.0, 8.0]
    assert 7.9 < limiter.retry_after([ALICE]) <= 8.0
    clock.now += 8
    assert limiter.retry_after([ALICE]) == 0.0


def test_lockout_after_max_failures_then_window_expiry() -> None:
    limiter, clock = _limiter()
    for _ in range(6):
        limiter.record_failure([ALICE])
        clock.now += 10
    wait = limiter.retry_after([ALICE])
    assert 240 < wait <= 300  # locked for lockout_seconds from the sixth failure
    clock.now += wait
    # Lockout over; the failures are still in the window but their delay has long passed.
    assert limiter.retry_after([ALICE]) == 0.0
    assert limiter.record_failure([ALICE]) > 250  # one more failure in the window: locked again
    clock.now += 600
    assert limiter.retry_after([ALICE]) == 0.0
    # Old failures left the window: the next one is free again.
    assert limiter.record_failure([ALICE]) == 0.0


def test_success_resets_only_given_keys() -> None:
    limiter, _ = _limiter()
    ip = ip_key("192.0.2.1")
    for _ in range(3):
        limiter.record_failure([ip, ALICE])
    assert limiter.retry_after([ALICE]) > 0 and limiter.retry_after([ip]) > 0
    limiter.record_success([ALICE])
    assert limiter.retry_after([ALICE]) == 0.0
    assert limiter.retry_after([ip]) > 0


def test_keys_are_independent() -> None:
    limiter, _ = _limiter()
    for _ in range(4):
        limiter.record_failure([account_key("a@h.test"), ip_key("192.0.2.1")])
    assert limiter.retry_after([account_key("b@h.test")]) == 0.0
    assert limiter.retry_after([ip_key("192.0.2.2")]) == 0.0
    assert limiter.retry_after([account_key("b@h.test"), ip_key("192.0.2.1")]) > 0


def test_account_and_ip_policies_differ() -> None:
    clock = Clock()
    limiter = MemoryRateLimiter(
        RateLimitSettings(account=POLICY, ip=RateLimitPolicy(max_failures=100, free_failures=5)), clock=clock
    )
    ip = ip_key("192.0.2.1")
    for n in range(5):
        limiter.record_failure([ip, account_key(f"user{n}@h.test")])
    assert limiter.retry_after([ip]) == 0.0  # five users behind one NAT address each mistyped once
    assert limiter.record_failure([ip]) > 0


def test_memory_is_bounded_and_stale_entries_swept() -> None:
    limiter, clock = _limiter()
    for n in range(50):
        limiter.record_failure([account_key(f"user{n}@h.test")])
    assert len(limiter) == 10
    # The most recent keys are the ones kept.
    assert limiter.retry_after([account_key("user49@h.test")]) == 0.0  # free failure, but tracked
    limiter.record_failure([account_key("user49@h.test")])
    assert limiter.retry_after([account_key("user49@h.test")]) > 0
    # Once the window has passed, new failures sweep old entries away.
    clock.now += 10_000
    for n in range(3):
        limiter.record_failure([account_key(f"new{n}@h.test")])
    assert len(limiter) < 10


@settings(max_examples=200)
@given(
    events=st.lists(
        st.tuples(st.sampled_from(["fail", "ok", "check"]), st.integers(0, 30), st.floats(0, 400)),
        max_size=80,
    )
)
def test_random_sequences_respect_bounds(events: list[tuple[str, int, float]]) -> None:
    limiter, clock = _limiter()
    for action, who, elapsed in events:
        clock.now += elapsed
        key = account_key(f"u{who}@h.test")
        if action == "fail":
            wait = limiter.record_failure([key])
        elif action == "ok":
            limiter.record_success([key])
            wait = limiter.retry_after([key])
            assert wait == 0.0
        else:
            wait = limiter.retry_after([key])
        assert 0.0 <= wait <= max(POLICY.max_delay, POLICY.lockout_seconds)
        assert len(limiter) <= SETTINGS.max_tracked_keys
