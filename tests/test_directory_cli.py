"""`mssante-operator directory ...` end to end on a SQLite store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from directory_data import activity_line, write_activity
from mssante_operator.cli import app, common

CONFIG = """
[instance]
hostname = "mail.hopital-demo.mssante.test"
data_dir = "{data}"

[store]
url = "sqlite+aiosqlite:///{data}/store.db"
master_key_file = "{data}/master.key"

[pki]
server_cert = "certs/server.crt"
server_key = "certs/server.key"

[directory]
max_reject_rate = 0.01
max_age_days = 8
batch_size = 100

[directory.ldap]
start_tls = true
base_dn = "ou=people,dc=hopital,dc=test"

[directory.ldap.attributes]
national_id = "employeeNumber"
mailbox = "mail"

[demo]
domain = "hopital-demo.mssante.test"

[[demo.mailboxes]]
address = "jean.martin@hopital-demo.mssante.test"
type = "PER"
owner = "810000000009"

[[demo.mailboxes]]
address = "cardiologie@hopital-demo.mssante.test"
type = "ORG"
structure_id = "1750000018"

[[demo.mailboxes]]
address = "dpi@hopital-demo.mssante.test"
type = "APP"
structure_id = "1750000018"
"""


@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tables would fold long addresses at the default 80 columns.
    monkeypatch.setattr(common.console, "_width", 200)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(CONFIG.format(data=tmp_path / "var"), encoding="utf-8")
    return path


def cli(config: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["--config", str(config), *args])
    return result.exit_code, result.output


def test_generate_import_lookup_stats(config: Path, tmp_path: Path) -> None:
    out = tmp_path / "sample"
    code, output = cli(
        config,
        "directory",
        "generate-sample",
        "-n",
        "60",
        "--out",
        str(out),
        "--with-demo",
        "--stamp",
        "202611010000",
    )
    assert code == 0, output
    files = sorted(out.glob("*.txt"))
    assert [f.name for f in files] == [
        "Extraction_Correspondance_MSSante_202611010000.txt",
        "PS_LibreAcces_Personne_activite_202611010000.txt",
    ]
    code, output = cli(config, "directory", "stats")
    assert code == 1 and "db upgrade" in output
    assert cli(config, "db", "upgrade")[0] == 0
    code, output = cli(config, "directory", "import", *map(str, files))
    assert code == 0, output
    assert "mirror replaced" in output and "loaded" in output
    code, output = cli(config, "directory", "import", *map(str, files))
    assert code == 0 and "nothing to do" in output

    code, output = cli(config, "directory", "lookup", "Jean.Martin@hopital-demo.mssante.test")
    assert code == 0 and "810000000009" in output and "active" in output
    code, output = cli(config, "directory", "lookup", "810000000009", "--json")
    assert code == 0
    data = json.loads(output)
    assert data["practitioners"][0]["national_id"] == "810000000009"
    assert data["practitioners"][0]["mailboxes"][0]["address"] == "jean.martin@hopital-demo.mssante.test"
    code, output = cli(config, "directory", "lookup", "1750000018")
    assert code == 0 and "cardiologie@hopital-demo.mssante.test" in output
    code, output = cli(config, "directory", "lookup", "martin")
    assert code == 0 and "MARTIN" in output
    code, output = cli(config, "directory", "lookup", "zzzz")
    assert code == 1 and "nothing found" in output

    code, output = cli(config, "directory", "stats")
    assert code == 0 and "healthy" in output and "PS_LibreAcces_Personne_activite_202611010000.txt" in output
    code, output = cli(config, "directory", "stats", "--json")
    stats = json.loads(output)
    assert stats["healthy"] and stats["mailboxes_by_type"]["APP"] >= 1

    bad = write_activity(
        tmp_path / "PS_LibreAcces_Personne_activite_202611080000.txt",
        [activity_line("12345678901", "FAUX", "Numéro"), activity_line("1", "X", "Y")],
    )
    code, output = cli(config, "directory", "import", str(bad))
    assert code == 1 and "refused" in output and "line 2" in output and "check digit" in output
    code, output = cli(config, "directory", "import", str(tmp_path / "missing.zip"))
    assert code == 1 and "no such file" in output and "mirror unchanged" in output


def test_sync_ldap_needs_a_server(config: Path) -> None:
    assert cli(config, "db", "upgrade")[0] == 0
    code, output = cli(config, "directory", "sync-ldap")
    assert code == 1 and "url is not set" in output


def test_generate_sample_without_config(tmp_path: Path) -> None:
    code, output = cli(
        tmp_path / "absent.toml",
        "directory",
        "generate-sample",
        "-n",
        "5",
        "--out",
        str(tmp_path),
        "--domain",
        "x.fr",
    )
    assert code == 0, output
    assert "@x.fr" in next(tmp_path.glob("Extraction*.txt")).read_text(encoding="utf-8")


def test_demo_directory_owns_the_demo_mailboxes(config: Path, tmp_path: Path) -> None:
    import asyncio
    import contextlib

    from mssante_operator.config import load_settings
    from mssante_operator.directory import DirectoryMirror, load_demo_directory
    from mssante_operator.store import create_engine, upgrade

    settings = load_settings(config)

    async def go() -> None:
        engine = create_engine(settings.store.url.get_secret_value())
        stack = contextlib.AsyncExitStack()
        try:
            await upgrade(engine)
            first = await load_demo_directory(engine, settings, practitioners=30)
            assert first.applied
            again = await load_demo_directory(engine, settings, practitioners=30)
            assert not again.applied  # same content: no-op
            mirror = DirectoryMirror(engine)
            await stack.enter_async_context(mirror)
            owner = await mirror.practitioner_for("810000000009")
            assert owner is not None and owner.active
            assert [m.address for m in owner.mailboxes] == ["jean.martin@hopital-demo.mssante.test"]
            for address in ("cardiologie@hopital-demo.mssante.test", "dpi@hopital-demo.mssante.test"):
                box = await mirror.lookup_mailbox(address)
                assert box is not None and box.structure_id == "1750000018"
            decision = await mirror.decide(
                "jean.martin@hopital-demo.mssante.test", "dpi@hopital-demo.mssante.test"
            )
            assert decision.allowed
        finally:
            await stack.aclose()
            await engine.dispose()

    asyncio.run(go())
