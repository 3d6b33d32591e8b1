"""Configuration: the shipped files validate; bad files fail naming the file, the key and the reason."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mssante_operator.config import ConfigError, load_settings

ROOT = Path(__file__).resolve().parent.parent
DEV = ROOT / "config" / "dev.toml"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _dev_with(tmp_path: Path, old: str, new: str) -> Path:
    text = DEV.read_text(encoding="utf-8")
    assert old in text
    return _write(tmp_path, text.replace(old, new, 1))


def test_shipped_configurations_validate() -> None:
    dev = load_settings(DEV)
    assert dev.smtp_inbound.port == 2525
    assert (dev.smtp_submission.starttls_port, dev.smtp_submission.implicit_tls_port) == (2587, 2465)
    assert (dev.imap.starttls_port, dev.imap.implicit_tls_port) == (2143, 2993)
    prod = load_settings(ROOT / "config" / "production.example.toml")
    assert prod.smtp_inbound.port == 25 and prod.imap.implicit_tls_port == 993
    assert prod.store.url.get_secret_value().startswith("postgresql+asyncpg://")
    assert prod.policy.auth.password_allowed_types == []


def test_unknown_key_is_an_error_naming_it(tmp_path: Path) -> None:
    path = _dev_with(tmp_path, "port = 2525", "port = 2525\nprot = 25")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    message = str(info.value)
    assert str(path) in message and "smtp_inbound.prot" in message and "unknown key" in message


def test_bad_value_names_key_and_reason(tmp_path: Path) -> None:
    path = _dev_with(tmp_path, "port = 2525", "port = 70000")
    with pytest.raises(ConfigError, match=r"smtp_inbound\.port: Input should be less than or equal to 65535"):
        load_settings(path)


def test_bad_store_url(tmp_path: Path) -> None:
    path = _dev_with(tmp_path, 'url = "sqlite+aiosqlite:///var/store.db"', 'url = "mysql://x"')
    with pytest.raises(ConfigError, match=r"store\.url: .*sqlite\+aiosqlite"):
        load_settings(path)


def test_missing_required_key(tmp_path: Path) -> None:
    path = _write(tmp_path, '[instance]\nname = "x"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert "instance.hostname: required key is missing" in str(info.value)
    assert "pki: required key is missing" in str(info.value)


@pytest.mark.parametrize(
    ("content", "reason"),
    [(b"[instance\n", "not valid TOML"), (b"\xff\xfe[x]", "not UTF-8")],
)
def test_unreadable_files(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "c.toml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=reason):
        load_settings(path)
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "absent.toml")


def test_environment_overrides_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MSSANTE_SMTP_INBOUND__PORT", "3525")
    monkeypatch.setenv("MSSANTE_STORE__URL", "postgresql+asyncpg://u:secret@db/mss")
    settings = load_settings(DEV)
    assert settings.smtp_inbound.port == 3525
    assert settings.smtp_inbound.host == "127.0.0.1"  # the rest of the section still from the file
    assert settings.store.url.get_secret_value().endswith("/mss")


def test_environment_names_the_config_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = _dev_with(tmp_path, 'name = "hopital-demo"', 'name = "from-env-file"')
    monkeypatch.setenv("MSSANTE_CONFIG", str(path))
    assert load_settings().instance.name == "from-env-file"


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mssante_operator", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {}), "COLUMNS": "200"},
        check=False,
    )


def test_config_check_masks_secrets() -> None:
    secret_url = "postgresql+asyncpg://mss:Sup3rS3cret@127.0.0.1/mss"
    result = _cli("--config", str(DEV), "config", "check", env={"MSSANTE_STORE__URL": secret_url})
    assert result.returncode == 0, result.stderr
    assert "Sup3rS3cret" not in result.stdout + result.stderr
    assert "demo-password-change-me" not in result.stdout
    assert "configuration OK" in result.stdout and "port = 2525" in result.stdout


def test_config_check_fails_clearly(tmp_path: Path) -> None:
    path = _dev_with(tmp_path, "port = 2525", 'port = "twenty"')
    result = _cli("--config", str(path), "config", "check")
    assert result.returncode == 2
    assert "smtp_inbound.port" in result.stderr and str(path) in result.stderr.replace("\n", "")


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("connections_per_peer = 0", r"relay\.connections_per_peer: .*greater than or equal to 1"),
        ("connection_idle_seconds = -1", r"relay\.connection_idle_seconds: .*greater than or equal to 0"),
        ("connection_max_age_seconds = 0", r"relay\.connection_max_age_seconds: .*greater than 0"),
    ],
)
def test_relay_session_cache_keys_are_validated(tmp_path: Path, line: str, reason: str) -> None:
    key = line.split(" = ")[0]
    path = _dev_with(tmp_path, f"{key} = ", f"{line}\n# ")
    with pytest.raises(ConfigError, match=reason):
        load_settings(path)


def test_relay_session_cache_keys_reach_the_settings(tmp_path: Path) -> None:
    path = _dev_with(tmp_path, "connections_per_peer = 5", "connections_per_peer = 2")
    relay = load_settings(path).relay
    assert (relay.connections_per_peer, relay.connection_idle_seconds, relay.connection_max_age_seconds) == (
        2,
        10.0,
        300.0,
    )
