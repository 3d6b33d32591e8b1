"""`keys`, `domain` and `mailbox` commands against a temporary SQLite store."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mssante_operator.accounts import verify_password
from mssante_operator.cli import app
from mssante_operator.store import create_engine, session_factory
from mssante_operator.store.crypto import MasterKey
from mssante_operator.store.mailstore import MailStore
from mssante_operator.store.models import Mailbox

RPPS_ID = "810000000009"
FINESS = "1750000018"
PASSWORD = "a good long password"


@dataclass
class Cli:
    config: Path
    key: Path
    db: Path
    runner: CliRunner

    def __call__(self, *args: str, input: str | None = None) -> tuple[int, str, str]:
        result = self.runner.invoke(app, ["--config", str(self.config), *args], input=input)
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return result.exit_code, result.stdout, result.stderr

    def ok(self, *args: str, input: str | None = None) -> str:
        code, out, err = self(*args, input=input)
        assert code == 0, f"{args} exited {code}: {err}"
        return out

    def error(self, *args: str, input: str | None = None, code: int = 1) -> str:
        got, out, err = self(*args, input=input)
        assert got == code, f"{args} exited {got}, expected {code}: {out} {err}"
        assert "error:" in err
        return " ".join(err.split())

    def mailbox(self, address: str) -> Mailbox | None:
        async def go() -> Mailbox | None:
            engine = create_engine(f"sqlite+aiosqlite:///{self.db}")
            try:
                store = MailStore(session_factory(engine), MasterKey.load(self.key))
                return await store.get_mailbox(address)
            finally:
                await engine.dispose()

        return asyncio.run(go())


def _config(tmp_path: Path, password_types: str = '["PER", "ORG"]') -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        f"""
[instance]
hostname = "mail.hopital.test"
[store]
url = "sqlite+aiosqlite:///{tmp_path / "store.db"}"
master_key_file = "{tmp_path / "keys" / "master.key"}"
[pki]
server_cert = "{tmp_path / "server.crt"}"
server_key = "{tmp_path / "server.key"}"
[policy.auth]
password_allowed_types = {password_types}
""",
        encoding="utf-8",
    )
    return path


@pytest.fixture
def bare_cli(tmp_path: Path) -> Cli:
    return Cli(
        config=_config(tmp_path),
        key=tmp_path / "keys" / "master.key",
        db=tmp_path / "store.db",
        runner=CliRunner(env={"COLUMNS": "250", "NO_COLOR": "1"}),
    )


@pytest.fixture
def cli(bare_cli: Cli) -> Cli:
    bare_cli.ok("keys", "generate")
    bare_cli.ok("db", "upgrade")
    bare_cli.ok("domain", "add", "hopital.test")
    return bare_cli


def test_keys_generate(bare_cli: Cli) -> None:
    out = bare_cli.ok("keys", "generate")
    assert "created" in out and "back it up" in out
    assert stat.S_IMODE(bare_cli.key.stat().st_mode) == 0o600
    content = bare_cli.key.read_bytes()
    assert len(content) == 32
    out = bare_cli.ok("keys", "generate")
    assert "already exists" in out and "kept" in out
    assert bare_cli.key.read_bytes() == content
    bare_cli.key.chmod(0o644)
    assert "chmod 600" in bare_cli.error("keys", "generate", code=2)


def test_commands_need_key_and_current_schema(bare_cli: Cli) -> None:
    assert "keys generate" in bare_cli.error("domain", "list", code=2)
    bare_cli.ok("keys", "generate")
    assert "run `mssante-operator db upgrade`" in bare_cli.error("domain", "list")
    bare_cli.ok("db", "upgrade")
    assert "no domain yet" in bare_cli.ok("domain", "list")


def test_domain_commands(cli: Cli) -> None:
    assert "domain hôpital-b.test (xn--hpital-b-43a.test) added" in cli.ok("domain", "add", "Hôpital-B.test")
    out = cli.ok("domain", "list")
    assert "hopital.test" in out and "xn--hpital-b-43a.test" in out
    assert "already exists" in cli.error("domain", "add", "HOPITAL.test")
    assert "at least two labels" in cli.error("domain", "add", "localhost")
    assert "letters, digits and inner hyphens" in cli.error("domain", "add", "bad_name.test")
    cli.ok("domain", "remove", "xn--hpital-b-43a.test")
    assert "not hosted here" in cli.error("domain", "remove", "xn--hpital-b-43a.test")
    cli.ok("mailbox", "add", "a@hopital.test", "--type", "PER", "--owner", RPPS_ID)
    assert "still has 1 mailbox" in cli.error("domain", "remove", "hopital.test")


def test_mailbox_add_per_with_password(cli: Cli) -> None:
    out = cli.ok(
        "mailbox",
        "add",
        "Jean.Martin@hopital.test",
        "--type",
        "PER",
        "--owner",
        RPPS_ID,
        "--name",
        "Dr Jean Martin",
        "--quota",
        "500M",
        "--password-stdin",
        input=PASSWORD + "\n",
    )
    assert "jean.martin@hopital.test (PER) created, quota 500.0 MiB, password set" in out
    mailbox = cli.mailbox("jean.martin@hopital.test")
    assert mailbox is not None
    assert mailbox.owner_national_id == RPPS_ID and mailbox.display_name == "Dr Jean Martin"
    assert mailbox.quota_bytes == 500 * 1024**2
    assert mailbox.password_hash is not None and PASSWORD not in mailbox.password_hash
    assert verify_password(mailbox.password_hash, PASSWORD)

    show = cli.ok("mailbox", "show", "jean.martin@hopital.test")
    for expected in ("PER", "active", RPPS_ID, "Dr Jean Martin", "password           set", "INBOX", "\\Sent"):
        assert expected in show, expected
    for folder in ("Sent", "Drafts", "Trash", "Junk", "Archive"):
        assert folder in show


def test_mailbox_add_org_app_cab(cli: Cli) -> None:
    cli.ok("mailbox", "add", "cardio@hopital.test", "--type", "ORG", "--structure-id", FINESS)
    cli.ok("mailbox", "add", "dpi@hopital.test", "--type", "app", "--structure-id", FINESS)
    cli.ok("mailbox", "add", "cabinet@hopital.test", "--type", "CAB", "--owner", "0751234567")
    listing = cli.ok("mailbox", "list")
    assert listing.index("cabinet@") < listing.index("cardio@") < listing.index("dpi@")
    assert "structure 1750000018" in listing
    cli.ok("domain", "add", "other.test")
    cli.ok("mailbox", "add", "x@other.test", "--type", "ORG", "--structure-id", FINESS)
    only = cli.ok("mailbox", "list", "--domain", "other.test")
    assert "x@other.test" in only and "cardio@" not in only
    assert "not hosted here" in cli.error("mailbox", "list", "--domain", "nope.test")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["not-an-address", "--type", "PER", "--owner", RPPS_ID], "exactly one '@'"),
        (["jean martin@hopital.test", "--type", "PER", "--owner", RPPS_ID], "white space"),
        (["jean@unknown.test", "--type", "PER", "--owner", RPPS_ID], "domain add unknown.test"),
        (["jean@hopital.test", "--type", "PER", "--owner", "810000000008"], "fails its check digit (Luhn)"),
        (
            ["jean@hopital.test", "--type", "PER", "--owner", "07512X4567"],
            "ADELI number must be 9 characters",
        ),
        (["jean@hopital.test", "--type", "PER", "--owner", "12345"], "8+RPPS (12 characters)"),
        (["jean@hopital.test", "--type", "PER"], "needs its owner's national id"),
        (["jean@hopital.test", "--type", "ORG"], "needs a structure id"),
        (["jean@hopital.test", "--type", "ORG", "--structure-id", "9999"], "must start with 1 (FINESS)"),
        (["jean@hopital.test", "--type", "XYZ"], "one of PER, ORG, APP, CAB"),
        (["jean@hopital.test", "--type", "PER", "--owner", RPPS_ID, "--quota", "lots"], "size 'lots'"),
    ],
)
def test_mailbox_add_errors(cli: Cli, args: list[str], message: str) -> None:
    assert message in cli.error("mailbox", "add", *args)
    assert cli.mailbox("jean@hopital.test") is None


def test_mailbox_add_duplicate_and_password_errors(cli: Cli) -> None:
    cli.ok("mailbox", "add", "jean@hopital.test", "--type", "PER", "--owner", RPPS_ID)
    assert "already exists" in cli.error(
        "mailbox", "add", "JEAN@hopital.test", "--type", "PER", "--owner", RPPS_ID
    )
    assert "at least 12 characters" in cli.error(
        "mailbox",
        "add",
        "b@hopital.test",
        "--type",
        "PER",
        "--owner",
        RPPS_ID,
        "--password-stdin",
        input="short\n",
    )
    assert "no password on standard input" in cli.error(
        "mailbox", "add", "b@hopital.test", "--type", "PER", "--owner", RPPS_ID, "--password-stdin", input=""
    )
    assert "does not include APP" in cli.error(
        "mailbox", "add", "b@hopital.test", "--type", "APP", "--structure-id", FINESS, "--password-stdin",
        input=PASSWORD + "\n",
    )  # fmt: skip
    assert cli.mailbox("b@hopital.test") is None


def test_status_changes(cli: Cli) -> None:
    cli.ok("mailbox", "add", "jean@hopital.test", "--type", "PER", "--owner", RPPS_ID)
    assert "suspended (was active)" in cli.ok("mailbox", "suspend", "jean@hopital.test")
    assert "already suspended" in cli.ok("mailbox", "suspend", "jean@hopital.test")
    assert "suspended" in cli.ok("mailbox", "show", "jean@hopital.test")
    assert "resumed (was suspended)" in cli.ok("mailbox", "resume", "jean@hopital.test")
    assert "closed (was active)" in cli.ok("mailbox", "close", "Jean@hopital.test")
    mailbox = cli.mailbox("jean@hopital.test")
    assert mailbox is not None and mailbox.status.value == "closed"
    assert "closed mailbox cannot be suspended" in cli.error("mailbox", "suspend", "jean@hopital.test")
    assert "does not exist" in cli.error("mailbox", "close", "nobody@hopital.test")
    assert "exactly one '@'" in cli.error("mailbox", "show", "nobody")
    assert "does not exist" in cli.error("mailbox", "show", "nobody@hopital.test")


def test_set_password(cli: Cli) -> None:
    cli.ok("mailbox", "add", "jean@hopital.test", "--type", "PER", "--owner", RPPS_ID)
    cli.ok("mailbox", "set-password", "jean@hopital.test", "--password-stdin", input=PASSWORD + "\r\n")
    mailbox = cli.mailbox("jean@hopital.test")
    assert mailbox is not None and mailbox.password_hash is not None
    assert verify_password(mailbox.password_hash, PASSWORD)
    assert "exactly one of" in cli.error("mailbox", "set-password", "jean@hopital.test")
    assert "does not exist" in cli.error(
        "mailbox", "set-password", "x@hopital.test", "--password-stdin", input=PASSWORD + "\n"
    )
    assert "control characters" in cli.error(
        "mailbox",
        "set-password",
        "jean@hopital.test",
        "--password-stdin",
        input="tab\there and long enough\n",
    )
    cli.ok("mailbox", "set-password", "jean@hopital.test", "--clear")
    mailbox = cli.mailbox("jean@hopital.test")
    assert mailbox is not None and mailbox.password_hash is None
    cli.ok("mailbox", "add", "dpi@hopital.test", "--type", "APP", "--structure-id", FINESS)
    assert "does not include APP" in cli.error(
        "mailbox", "set-password", "dpi@hopital.test", "--password-stdin", input=PASSWORD + "\n"
    )


def test_keys_check(cli: Cli, tmp_path: Path) -> None:
    cli.ok("mailbox", "add", "jean@hopital.test", "--type", "PER", "--owner", RPPS_ID)
    assert "opens all 1 mailbox key(s)" in cli.ok("keys", "check")
    cli.key.unlink()
    MasterKey.generate(cli.key)
    assert "wrong master key: mailbox jean@hopital.test" in cli.error("keys", "check")


def test_console_script_help_and_exit_code(cli: Cli) -> None:
    exe = Path(sys.executable).parent / "mssante-operator"
    env = {**os.environ, "COLUMNS": "200"}
    help_text = subprocess.run([exe, "--help"], capture_output=True, text=True, env=env, check=True).stdout
    for command in ("domain", "mailbox", "keys"):
        assert command in help_text
    done = subprocess.run(
        [
            exe,
            "--config",
            str(cli.config),
            "mailbox",
            "add",
            "x@hopital.test",
            "--type",
            "PER",
            "--owner",
            "81",
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 1
    assert "national person id" in done.stderr
