"""IMAP sequence sets (RFC 3501 `sequence-set`, RFC 9051): parsing, evaluation, compact rendering.

A set is kept as the ranges the client wrote, with `None` standing for `*`; it is evaluated either
against the message count (sequence numbers) or against the sorted UID list of a selected mailbox.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

__all__ = ["SAVED", "SequenceSet", "SequenceSetError", "compress", "compress_ordered", "missing_ranges"]

# A UID or sequence number is a 32-bit non-zero unsigned integer.
MAX_NUMBER = 0xFFFFFFFF


class SequenceSetError(ValueError):
    """A sequence set that does not follow the grammar."""


Bound = int | None  # None is '*'


@dataclass(frozen=True, slots=True)
class SequenceSet:
    """A parsed sequence set: ranges (low, high) in client order; a single number is (n, n)."""

    ranges: tuple[tuple[Bound, Bound], ...]
    #: `$` (RFC 5182 SEARCHRES): the session's saved search result, resolved by the session.
    saved: bool = False

    @classmethod
    def parse(cls, text: bytes | str) -> SequenceSet:
        raw = text.decode("ascii", "replace") if isinstance(text, bytes) else text
        if not raw:
            raise SequenceSetError("empty sequence set")
        if raw == "$":
            return SAVED
        if "$" in raw:
            raise SequenceSetError(f"'$' stands alone, it cannot be part of {raw!r}")
        ranges: list[tuple[Bound, Bound]] = []
        for item in raw.split(","):
            if not item:
                raise SequenceSetError(f"empty element in sequence set {raw!r}")
            parts = item.split(":")
            if len(parts) > 2:
                raise SequenceSetError(f"{item!r} has more than one ':'")
            a = _bound(parts[0], raw)
            b = _bound(parts[1], raw) if len(parts) == 2 else a
            ranges.append((a, b))
        return cls(tuple(ranges))

    @classmethod
    def of(cls, numbers: Iterable[int]) -> SequenceSet:
        """The compact set of these numbers (sorted, runs merged)."""
        text = compress(numbers)
        return cls.parse(text) if text else cls(())

    def __str__(self) -> str:
        if self.saved:
            return "$"
        return ",".join(_render_range(a, b) for a, b in self.ranges)

    @property
    def uses_star(self) -> bool:
        return any(a is None or b is None for a, b in self.ranges)

    def _normalised(self, star: int) -> list[tuple[int, int]]:
        out = []
        for a, b in self.ranges:
            lo = star if a is None else a
            hi = star if b is None else b
            if lo > hi:
                lo, hi = hi, lo
            out.append((lo, hi))
        return out

    def max_number(self, star: int) -> int:
        """The largest number the set names once `*` is `star`."""
        return max((hi for _, hi in self._normalised(star)), default=0)

    def iter_seqs(self, count: int) -> Iterator[int]:
        """Sequence numbers in 1..count, ascending and without duplicates (`*` is `count`)."""
        merged = _merge(self._normalised(count))
        for lo, hi in merged:
            yield from range(max(lo, 1), min(hi, count) + 1)

    def seqs(self, count: int) -> list[int]:
        return list(self.iter_seqs(count))

    def uids(self, uids: Sequence[int]) -> list[int]:
        """The members of the ascending UID list `uids` named by this set (`*` is the largest UID).

        Ranges are resolved with bisection, so `1:*` on a 100,000-message mailbox is a slice.
        """
        if not uids:
            return []
        merged = _merge(self._normalised(uids[-1]))
        if len(merged) == 1:
            lo, hi = merged[0]
            return list(uids[bisect.bisect_left(uids, lo) : bisect.bisect_right(uids, hi)])
        out: list[int] = []
        for lo, hi in merged:
            out.extend(uids[bisect.bisect_left(uids, lo) : bisect.bisect_right(uids, hi)])
        return out

    def contains(self, number: int, star: int) -> bool:
        return any(lo <= number <= hi for lo, hi in self._normalised(star))

    def numbers_without_star(self) -> Iterator[int]:
        """Every number of a set that has no `*` (e.g. QRESYNC known UIDs), ascending, deduplicated."""
        if self.uses_star:
            raise SequenceSetError("'*' is not allowed here")
        for lo, hi in _merge(self._normalised(0)):
            yield from range(lo, hi + 1)


SAVED = SequenceSet((), saved=True)


def missing_ranges(known: SequenceSet, present: Sequence[int], *, below: int) -> list[tuple[int, int]]:
    """Ranges of the numbers `known` names (no `*`), under `below`, that are absent from the ascending
    `present` list: QRESYNC's vanished UIDs, computed without enumerating the known set."""
    out: list[tuple[int, int]] = []
    for lo, hi in _merge(known._normalised(0)):
        hi = min(hi, below - 1)
        if lo > hi:
            continue
        cur = lo
        i = bisect.bisect_left(present, lo)
        while i < len(present) and present[i] <= hi:
            if present[i] > cur:
                out.append((cur, present[i] - 1))
            cur = present[i] + 1
            i += 1
        if cur <= hi:
            out.append((cur, hi))
    return out


def _bound(text: str, whole: str) -> Bound:
    if text == "*":
        return None
    if not text.isascii() or not text.isdigit():
        raise SequenceSetError(f"{text!r} in sequence set {whole!r} is not a number or '*'")
    if text[0] == "0":
        raise SequenceSetError(f"{text!r} in sequence set {whole!r}: numbers start at 1")
    value = int(text)
    if value > MAX_NUMBER:
        raise SequenceSetError(f"{text!r} in sequence set {whole!r} exceeds 4294967295")
    return value


def _render_range(a: Bound, b: Bound) -> str:
    sa = "*" if a is None else str(a)
    if a == b:
        return sa
    return f"{sa}:{'*' if b is None else b}"


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    if len(ranges) <= 1:
        return ranges
    ranges = sorted(ranges)
    out = [ranges[0]]
    for lo, hi in ranges[1:]:
        plo, phi = out[-1]
        if lo <= phi + 1:
            if hi > phi:
                out[-1] = (plo, hi)
        else:
            out.append((lo, hi))
    return out


def compress(numbers: Iterable[int]) -> str:
    """`1,2,3,5,7,8` → `1:3,5,7:8`; input in any order, duplicates ignored."""
    return compress_ordered(sorted(set(numbers)))


def compress_ordered(numbers: Iterable[int]) -> str:
    """Compress ascending runs without reordering (COPYUID pairs source and destination by position)."""
    parts: list[str] = []
    start: int | None = None
    prev = 0
    for n in numbers:
        if start is not None and n == prev + 1:
            prev = n
            continue
        if start is not None:
            parts.append(str(start) if start == prev else f"{start}:{prev}")
        start = prev = n
    if start is not None:
        parts.append(str(start) if start == prev else f"{start}:{prev}")
    return ",".join(parts)
