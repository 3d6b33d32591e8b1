"""`mssante-operator audit verify|export|tail` on a configuration and SQLite store of the test's own."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mssante_operator.audit import AuditEvent, AuditLog
from mssante_operator.cli import app
from mssante_operator.store import create_engine, upgrade
from mssante_operator.store.engine import session_factory

T0 = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "store.db"


@pytest.fixture
def config(tmp_path: Path, db: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        f"""
[instance]
hostname = "mail.hopital.mssante.test"
data_dir = "{tmp_path / "var"}"

[store]
url = "sqlite+aiosqlite:///{db}"

[pki]
server_cert = "{tmp_path / "server.crt"}"
server_key = "{tmp_path / "server.key"}"
""",
        encoding="utf-8",
    )
    return path


def populate(db: Path, n: int, *, migrate: bool = True) -> None:
    """A migrated store with records 1..n: ts T0 + i hours, mailbox box{i % 2}."""

    async def go() -> None:
        engine = create_engine(f"sqlite+aiosqlite:///{db}")
        try:
            if migrate:
                await upgrade(engine)
            audit = AuditLog(session_factory(engine))
            await audit.start()
            for i in range(1, n + 1):
                audit.record(
                    AuditEvent(
                        "message.read",
                        "success",
                        actor=f"user{i}@hopital.mssante.test",
                        mailbox=f"box{i % 2}@hopital.mssante.test",
                        message_ref=f"<m{i}@x>",
                        remote_addr="192.0.2.1",
                        ts=T0 + timedelta(hours=i),
                    )
                )
            await audit.stop()
        finally:
            await engine.dispose()

    asyncio.run(go())


def cli(config: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["--config", str(config), "audit", *args])
    return result.exit_code, result.output


def test_verify_intact_chain(config: Path, db: Path) -> None:
    populate(db, 6)
    code, output = cli(config, "verify")
    assert code == 0, output
    assert "audit chain intact: 6 record(s)" in output


def test_verify_names_the_altered_record(config: Path, db: Path) -> None:
    populate(db, 6)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE audit_records SET actor = 'someone.else@x' WHERE seq = 4")
    code, output = cli(config, "verify")
    assert code == 3, output
    assert "BROKEN at seq 4" in output
    assert "record 4 does not match its hash" in output


def test_verify_names_records_deleted_from_the_end(config: Path, db: Path) -> None:
    populate(db, 6)
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM audit_records WHERE seq = 6")
    code, output = cli(config, "verify")
    assert code == 3, output
    assert "seq 6" in output and "deleted from the end" in output


def test_verify_through_the_installed_command(config: Path, db: Path) -> None:
    """The real entry point, in its own process, on a store with a record removed in the middle."""
    populate(db, 5)
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM audit_records WHERE seq = 2")
    proc = subprocess.run(
        [sys.executable, "-m", "mssante_operator", "--config", str(config), "audit", "verify"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert proc.returncode == 3, proc.stderr
    assert "seq 2" in proc.stderr and "record 2 is missing" in proc.stderr


def test_export_to_stdout_is_json_lines_and_is_itself_audited(config: Path, db: Path) -> None:
    populate(db, 4)
    result = CliRunner().invoke(app, ["--config", str(config), "audit", "export"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["seq"] for r in lines] == [1, 2, 3, 4]
    assert lines[0]["ts"] == "2026-11-01T09:00:00.000000Z"
    assert set(lines[0]) >= {"event", "outcome", "actor", "mailbox", "details", "prev_hash", "hash"}
    code, output = cli(config, "verify")
    assert code == 0 and "5 record(s)" in output, output
    code, output = cli(config, "tail", "-n", "1")
    assert code == 0 and "audit.exported" in output, output


def test_export_filters_to_a_file(config: Path, db: Path, tmp_path: Path) -> None:
    populate(db, 10)
    out = tmp_path / "export.jsonl"
    code, output = cli(
        config,
        "export",
        "--since",
        "2026-11-01T11:00:00Z",
        "--until",
        "2026-11-01T17:00:00+02:00",  # 15:00 UTC
        "--mailbox",
        "box1@hopital.mssante.test",
        "--out",
        str(out),
    )
    assert code == 0, output
    assert "exported 2 record(s)" in output
    # 11:00 is kept (since is inclusive), 15:00 is not (until is exclusive).
    assert [json.loads(line)["seq"] for line in out.read_text().splitlines()] == [3, 5]
    code, output = cli(config, "export", "--since", "2026-11-01", "--out", str(out))
    assert code == 0 and "exported 11 record(s)" in output, output


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--since", "yesterday"], ["--since", "'yesterday' is not an ISO 8601 date"]),
        (["--until", "2026-13-01"], ["--until", "'2026-13-01'"]),
        (["--since", "2026-11-02", "--until", "2026-11-01"], ["--until", "must be later than --since"]),
        (["--out", "/nonexistent/dir/x.jsonl"], ["--out", "does not exist"]),
    ],
)
def test_export_bad_arguments(config: Path, db: Path, args: list[str], words: list[str]) -> None:
    populate(db, 1)
    code, output = cli(config, "export", *args)
    assert code == 2, output
    flat = " ".join(output.split())
    for word in words:
        assert word in flat, flat


def test_tail_shows_the_latest_records(config: Path, db: Path) -> None:
    populate(db, 8)
    code, output = cli(config, "tail", "-n", "3")
    assert code == 0, output
    assert "last 3 audit record(s)" in output
    assert "<m8@x>" in output and "<m6@x>" in output and "<m5@x>" not in output


def test_commands_refuse_a_store_that_is_not_migrated(config: Path, db: Path) -> None:
    code, output = cli(config, "verify")
    assert code == 1, output
    assert "db upgrade" in output


def test_verify_with_the_printed_anchor(config: Path, db: Path) -> None:
    populate(db, 3)
    code, output = cli(config, "verify")
    assert code == 0, output
    anchor = " ".join(output.split()).split("--anchor ")[1].split()[0]
    assert anchor.startswith("3:")
    code, output = cli(config, "verify", "--anchor", anchor)
    assert code == 0, output
    code, output = cli(config, "verify", "--anchor", "3:" + "0" * 64)
    assert code == 3 and "seq 3" in output, output
    code, output = cli(config, "verify", "--anchor", "three:abc")
    assert code == 2 and "is not SEQ:HASH" in " ".join(output.split()), output


def test_prune_asks_then_removes_and_refuses_a_broken_chain(config: Path, db: Path) -> None:
    populate(db, 6)  # ts = 09:00 .. 14:00
    code, output = cli(config, "prune", "--before", "2026-11-01T12:00:00Z")
    assert code == 0, output
    assert "would remove 3 record(s), seq 1..3" in " ".join(output.split())
    code, output = cli(config, "prune", "--before", "2026-11-01T12:00:00Z", "--yes")
    assert code == 0, output
    assert "removed 3 record(s)" in output
    code, output = cli(config, "verify")
    assert code == 0 and "4 record(s)" in output, output  # 4..6 and the audit.pruned record
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE audit_records SET outcome = 'refused' WHERE seq = 5")
    code, output = cli(config, "prune", "--before", "2030-01-01", "--yes")
    assert code == 3, output
    assert "seq 5" in output and "nothing removed" in output
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM audit_records").fetchone() == (4,)
    code, output = cli(config, "prune", "--before", "soon")
    assert code == 2 and "--before" in output, output
