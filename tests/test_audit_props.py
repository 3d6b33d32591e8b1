"""Property tests of the pure parts: whatever a peer sends, the stored fields are storable and
hash the same after a JSON round trip (what the database does to them)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
import typer
from hypothesis import given, settings
from hypothesis import strategies as st

from mssante_operator.audit import GENESIS_HASH, AuditEvent, format_ts, record_hash
from mssante_operator.audit.chain import FIELD_LIMITS, TEXT_FIELDS, normalize_fields
from mssante_operator.cli.audit_cmd import parse_anchor, parse_when

json_like = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text()
    | st.binary()
    | st.datetimes(timezones=st.just(UTC)),
    lambda children: (
        st.lists(children, max_size=4)
        | st.tuples(children, children)
        | st.dictionaries(st.text(max_size=8) | st.integers(), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(
    texts=st.fixed_dictionaries({name: st.none() | st.text(max_size=1200) for name in TEXT_FIELDS}),
    details=st.dictionaries(st.text(max_size=10), json_like, max_size=5),
    ts=st.datetimes(min_value=datetime(1, 1, 2), timezones=st.just(UTC)),
)
def test_normalized_fields_are_storable_and_hash_stably(
    texts: dict[str, str | None], details: dict[str, Any], ts: datetime
) -> None:
    fields = normalize_fields(AuditEvent("message.read", "success", details=details, **texts), ts)
    for name in TEXT_FIELDS:
        value = fields[name]
        if value is not None:
            assert "\x00" not in value
            value.encode("utf-8")
            assert len(value) <= FIELD_LIMITS[name]
    stored = json.loads(json.dumps(fields["details"], allow_nan=False))
    assert stored == fields["details"]
    assert len(format_ts(ts)) == 27
    before = record_hash(GENESIS_HASH, seq=1, **fields)
    assert record_hash(GENESIS_HASH, seq=1, **{**fields, "details": stored}) == before


@given(st.text(max_size=40))
def test_date_options_never_crash(text: str) -> None:
    try:
        when = parse_when(text, "--since")
    except typer.BadParameter as exc:
        assert "--since" in str(exc.param_hint) and "ISO 8601" in str(exc)
    else:
        assert when is not None and when.tzinfo is UTC


@given(st.text(max_size=80))
def test_anchor_option_never_crashes(text: str) -> None:
    try:
        seq, digest = parse_anchor(text)
    except typer.BadParameter as exc:
        assert "SEQ:HASH" in str(exc)
    else:
        assert seq >= 0 and len(digest) == 64


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-01", datetime(2026, 11, 1, tzinfo=UTC)),
        ("2026-11-01T08:30:00Z", datetime(2026, 11, 1, 8, 30, tzinfo=UTC)),
        ("2026-11-01T09:30:00+01:00", datetime(2026, 11, 1, 8, 30, tzinfo=UTC)),
        ("2026-11-01 08:30", datetime(2026, 11, 1, 8, 30, tzinfo=UTC)),
    ],
)
def test_date_options(text: str, expected: datetime) -> None:
    assert parse_when(text, "--since") == expected
