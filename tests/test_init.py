"""`mssante-operator init` prepares the demo instance, and running it twice changes nothing."""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mssante_operator.cli import app

ROOT = Path(__file__).resolve().parent.parent


def test_init_is_idempotent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "config").mkdir()
    shutil.copy(ROOT / "config" / "dev.toml", tmp_path / "config" / "dev.toml")
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    first = runner.invoke(app, ["init"])
    assert first.exit_code == 0, first.output
    assert "domain hopital-demo.mssante.test added" in first.output
    assert "mailbox jean.martin@hopital-demo.mssante.test (PER) created with password" in first.output
    assert "mailbox dpi@hopital-demo.mssante.test (APP) created" in first.output
    key = tmp_path / "var" / "master.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and len(key.read_bytes()) == 32
    cert = (tmp_path / "certs" / "dev" / "server.crt").read_bytes()
    listed = runner.invoke(app, ["mailbox", "list"])
    assert listed.output.count(" active ") == 3

    second = runner.invoke(app, ["init"])
    assert second.exit_code == 0, second.output
    assert "master key kept" in second.output
    assert "added" not in second.output and "created" not in second.output
    assert (tmp_path / "certs" / "dev" / "server.crt").read_bytes() == cert
    again = runner.invoke(app, ["mailbox", "list"])
    assert again.output.count(" active ") == 3
    trust = runner.invoke(app, ["trust", "show", "hopital-demo.mssante.test"])
    assert trust.exit_code == 0 and "mail.hopital-demo.mssante.test" in trust.output


def test_init_refuses_a_bad_demo_mailbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "config").mkdir()
    text = (ROOT / "config" / "dev.toml").read_text(encoding="utf-8").replace("810000000009", "810000000008")
    (tmp_path / "config" / "dev.toml").write_text(text, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["init"])
    assert result.exit_code == 1
    assert "check digit" in result.output
