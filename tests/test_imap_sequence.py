from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mssante_operator.imap.sequence import SequenceSet, SequenceSetError, compress, compress_ordered


def test_parse_and_render() -> None:
    s = SequenceSet.parse("1:3,5,7:*,*,9:8")
    assert s.ranges == ((1, 3), (5, 5), (7, None), (None, None), (9, 8))
    assert str(s) == "1:3,5,7:*,*,9:8"
    assert s.uses_star


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("1,,2", "empty element"),
        ("0", "start at 1"),
        ("1:0", "start at 1"),
        ("01", "start at 1"),
        ("1:2:3", "more than one"),
        ("a", "not a number"),
        ("-1", "not a number"),
        ("4294967296", "exceeds"),
        ("1:", "not a number"),
        ("١", "not a number"),
    ],
)
def test_invalid_sets(text: str, reason: str) -> None:
    with pytest.raises(SequenceSetError, match=reason):
        SequenceSet.parse(text)


def test_sequence_numbers() -> None:
    assert SequenceSet.parse("2:4,1").seqs(10) == [1, 2, 3, 4]
    assert SequenceSet.parse("*").seqs(7) == [7]
    assert SequenceSet.parse("5:*").seqs(3) == [3]  # *:5 on a 3-message mailbox is 3
    assert SequenceSet.parse("1:*").seqs(0) == []
    assert SequenceSet.parse("3,3,2:3").seqs(5) == [2, 3]
    assert SequenceSet.parse("4:2").seqs(5) == [2, 3, 4]


def test_uids_against_a_uid_list() -> None:
    uids = [3, 7, 8, 20, 21, 100]
    assert SequenceSet.parse("1:*").uids(uids) == uids
    assert SequenceSet.parse("8:21").uids(uids) == [8, 20, 21]
    assert SequenceSet.parse("*").uids(uids) == [100]
    # n:* with n above the highest UID still names the highest UID (RFC 3501 6.4.8).
    assert SequenceSet.parse("500:*").uids(uids) == [100]
    assert SequenceSet.parse("4:6,200").uids(uids) == []
    assert SequenceSet.parse("21:3,7").uids(uids) == [3, 7, 8, 20, 21]
    assert SequenceSet.parse("1:*").uids([]) == []


def test_max_number_and_contains() -> None:
    s = SequenceSet.parse("2,9:5")
    assert s.max_number(3) == 9
    assert s.contains(6, 100) and not s.contains(4, 100)
    assert SequenceSet.parse("3:*").contains(50, 60)


def test_compress() -> None:
    assert compress([1, 2, 3, 5, 7, 8]) == "1:3,5,7:8"
    assert compress([8, 7, 1, 1]) == "1,7:8"
    assert compress([]) == ""
    # COPYUID pairs by position: order kept, only ascending runs merged.
    assert compress_ordered([5, 6, 7, 2, 3]) == "5:7,2:3"
    assert SequenceSet.of([4, 2, 3]).ranges == ((2, 4),)
    assert SequenceSet.of(iter([])).ranges == ()


def test_numbers_without_star() -> None:
    assert list(SequenceSet.parse("5:3,9").numbers_without_star()) == [3, 4, 5, 9]
    with pytest.raises(SequenceSetError, match="not allowed"):
        list(SequenceSet.parse("1:*").numbers_without_star())


bounds = st.one_of(st.none(), st.integers(1, 60))
sets = st.lists(st.tuples(bounds, bounds), min_size=1, max_size=8).map(lambda rs: SequenceSet(tuple(rs)))


@given(sets)
def test_render_parse_round_trip(s: SequenceSet) -> None:
    assert SequenceSet.parse(str(s)) == s


def _naive(s: SequenceSet, universe: list[int], star: int) -> set[int]:
    out = set()
    for a, b in s.ranges:
        lo, hi = (star if a is None else a), (star if b is None else b)
        lo, hi = min(lo, hi), max(lo, hi)
        out |= {u for u in universe if lo <= u <= hi}
    return out


@given(sets, st.lists(st.integers(1, 80), unique=True).map(sorted))
def test_uid_evaluation_matches_a_naive_model(s: SequenceSet, uids: list[int]) -> None:
    got = s.uids(uids)
    assert got == sorted(got) and len(set(got)) == len(got)
    expected = _naive(s, uids, uids[-1]) if uids else set()
    assert set(got) == expected


@given(sets, st.integers(0, 70))
def test_seq_evaluation_matches_a_naive_model(s: SequenceSet, count: int) -> None:
    universe = list(range(1, count + 1))
    assert s.seqs(count) == sorted(_naive(s, universe, count))


@given(st.lists(st.integers(1, 2**32 - 1), max_size=30))
def test_compress_round_trip(numbers: list[int]) -> None:
    text = compress(numbers)
    if not numbers:
        assert text == ""
        return
    assert list(SequenceSet.parse(text).numbers_without_star()) == sorted(set(numbers))
    # Compact: no two adjacent ranges could be merged.
    parsed = SequenceSet.parse(text).ranges
    for (_, hi), (lo, _) in itertools.pairwise(parsed):
        assert lo is not None and hi is not None and lo > hi + 1


@given(st.lists(st.integers(1, 1000), max_size=30, unique=True))
def test_compress_ordered_keeps_order(numbers: list[int]) -> None:
    text = compress_ordered(numbers)
    expanded: list[int] = []
    for item in text.split(",") if text else []:
        lo, _, hi = item.partition(":")
        expanded.extend(range(int(lo), int(hi or lo) + 1))
    assert expanded == numbers


def test_missing_ranges() -> None:
    from mssante_operator.imap.sequence import missing_ranges

    present = [3, 4, 8, 20]
    assert missing_ranges(SequenceSet.parse("1:10"), present, below=100) == [(1, 2), (5, 7), (9, 10)]
    assert missing_ranges(SequenceSet.parse("1:4000000000"), present, below=22) == [
        (1, 2),
        (5, 7),
        (9, 19),
        (21, 21),
    ]
    assert missing_ranges(SequenceSet.parse("3:4,8"), present, below=100) == []
    assert missing_ranges(SequenceSet.parse("50:60"), present, below=40) == []


@given(
    st.lists(st.tuples(st.integers(1, 60), st.integers(1, 60)), min_size=1, max_size=5),
    st.lists(st.integers(1, 70), unique=True).map(sorted),
    st.integers(1, 80),
)
def test_missing_ranges_matches_a_naive_model(
    ranges: list[tuple[int, int]], present: list[int], below: int
) -> None:
    from mssante_operator.imap.sequence import missing_ranges

    known = SequenceSet(tuple(ranges))
    got = {n for lo, hi in missing_ranges(known, present, below=below) for n in range(lo, hi + 1)}
    named = set(known.numbers_without_star())
    assert got == {n for n in named if n < below and n not in present}
