"""`mssante-operator queue ...` against a real SQLite store built by the CLI itself."""

from __future__ import annotations

import asyncio
from pathlib import Path

from typer.testing import CliRunner

from mssante_operator.cli import app
from mssante_operator.store import create_engine, session_factory
from mssante_operator.store.models import MessageBody, QueueEntry, QueueRecipient

ROOT = Path(__file__).resolve().parent.parent


def _config(tmp_path: Path) -> Path:
    text = (ROOT / "config" / "dev.toml").read_text(encoding="utf-8")
    text = text.replace("sqlite+aiosqlite:///var/store.db", f"sqlite+aiosqlite:///{tmp_path / 'store.db'}")
    path = tmp_path / "c.toml"
    path.write_text(text, encoding="utf-8")
    return path


async def _seed(url: str) -> None:
    engine = create_engine(url)
    sessions = session_factory(engine)
    async with sessions() as session, session.begin():
        body = MessageBody(size=1, backend="database", ciphertext=b"-")
        session.add(body)
        await session.flush()
        for n in range(2):
            entry = QueueEntry(
                queue_id=f"QC{n}",
                body_id=body.id,
                wrapped_body_key=b"k",
                mail_from="a@a.test",
                recipient_domain="b.test",
            )
            session.add(entry)
            await session.flush()
            session.add(
                QueueRecipient(entry_id=entry.id, address=f"r{n}@b.test", last_reply="451 4.3.0 later")
            )
    await engine.dispose()


def test_queue_commands(tmp_path: Path) -> None:
    runner = CliRunner()
    config = str(_config(tmp_path))
    assert runner.invoke(app, ["--config", config, "db", "upgrade"]).exit_code == 0
    empty = runner.invoke(app, ["--config", config, "queue", "list"])
    assert empty.exit_code == 0 and "queue is empty" in empty.output
    asyncio.run(_seed(f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"))

    listed = runner.invoke(app, ["--config", config, "queue", "list"], env={"COLUMNS": "200"})
    assert listed.exit_code == 0 and "QC0" in listed.output and "QC1" in listed.output
    shown = runner.invoke(app, ["--config", config, "queue", "show", "QC1"])
    assert shown.exit_code == 0 and "r1@b.test" in shown.output and "451 4.3.0 later" in shown.output

    held = runner.invoke(app, ["--config", config, "queue", "hold", "QC0"])
    assert held.exit_code == 0 and "1 entry held" in held.output
    listed = runner.invoke(
        app, ["--config", config, "queue", "list", "--status", "held"], env={"COLUMNS": "200"}
    )
    assert "QC0" in listed.output and "QC1" not in listed.output
    assert "1 entry released" in runner.invoke(app, ["--config", config, "queue", "release", "QC0"]).output
    assert "2 entries due now" in runner.invoke(app, ["--config", config, "queue", "retry", "--all"]).output
    deleted = runner.invoke(app, ["--config", config, "queue", "delete", "QC1", "--yes"])
    assert deleted.exit_code == 0 and "1 entry deleted" in deleted.output

    missing = runner.invoke(app, ["--config", config, "queue", "show", "NOPE"])
    assert missing.exit_code == 1 and "no queue entry 'NOPE'" in missing.output
    assert runner.invoke(app, ["--config", config, "queue", "retry"]).exit_code == 1
