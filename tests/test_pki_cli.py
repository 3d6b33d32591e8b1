"""`mssante-operator pki ...` through typer's CliRunner, on a configuration of the test's own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mssante_operator.cli import app
from mssante_operator.pki.devpki import DevPki
from mssante_operator.pki.identity import identity_from_certificate
from pki_fixtures import PERSON_ID, SERVER_HOST, STRUCTURE_ID, leaf


@pytest.fixture
def config(tmp_path: Path) -> Path:
    dev = tmp_path / "certs" / "dev"
    path = tmp_path / "config.toml"
    path.write_text(
        f"""
[instance]
hostname = "{SERVER_HOST}"

[pki]
ca_files = ["{dev / "ca-bundle.pem"}"]
crl_dirs = ["{dev / "crl"}"]
server_cert = "{tmp_path / "tls" / "server.crt"}"
server_key = "{tmp_path / "tls" / "server.key"}"
dev_ca_dir = "{dev}"
""",
        encoding="utf-8",
    )
    return path


def run(config: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["--config", str(config), "pki", *args])
    return result.exit_code, result.output


def test_init_dev_is_idempotent_and_writes_the_configured_server_certificate(config: Path) -> None:
    code, output = run(config, "init-dev")
    assert code == 0, output
    assert "dev PKI ready" in output
    server = config.parent / "tls" / "server.crt"
    first = leaf(server)
    assert identity_from_certificate(first).host_names == (SERVER_HOST,)
    root_before = (config.parent / "certs" / "dev" / "root.crt").read_bytes()
    code, output = run(config, "init-dev")
    assert code == 0, output
    assert leaf(server) == first  # not re-issued
    assert (config.parent / "certs" / "dev" / "root.crt").read_bytes() == root_before


def test_init_dev_with_an_explicit_directory(config: Path, tmp_path: Path) -> None:
    code, output = run(config, "init-dev", "--dir", str(tmp_path / "elsewhere"), "--hostname", "mx.test")
    assert code == 0, output
    assert identity_from_certificate(leaf(tmp_path / "elsewhere" / "server.crt")).common_name == "mx.test"


def test_issue_show_revoke(config: Path, tmp_path: Path) -> None:
    assert run(config, "init-dev")[0] == 0
    out = tmp_path / "issued"
    code, output = run(
        config,
        "issue-person",
        "--national-id",
        PERSON_ID,
        "--first",
        "Jean",
        "--last",
        "Martin",
        "--out",
        str(out),
    )
    assert code == 0, output
    assert f"CN={PERSON_ID},GN=Jean,SN=Martin,C=FR" in output
    person = out / f"{PERSON_ID}.crt"
    assert (out / f"{PERSON_ID}.key").stat().st_mode & 0o077 == 0

    code, output = run(config, "show", str(person))
    assert code == 0, output
    assert "PERSON" in output and f"national id: {PERSON_ID}" in output and "ACCEPTED" in output

    code, output = run(config, "revoke", str(person), "--reason", "keyCompromise")
    assert code == 0, output and "revoked" in output
    code, output = run(config, "show", str(person), "--json")
    assert code == 1
    payload = json.loads(output)
    assert payload["identity"]["national_id"] == PERSON_ID
    assert payload["validation"]["reason"] == "revoked"

    code, output = run(
        config,
        "issue-server",
        "--cn",
        "smtp.chu-x.fr",
        "--org",
        "CHU X",
        "--structure-id",
        STRUCTURE_ID,
        "--out",
        str(out),
        "--dns",
        "mx2.chu-x.fr",
    )
    assert code == 0, output
    code, output = run(config, "show", str(out / "smtp.chu-x.fr.crt"))
    assert code == 0, output
    assert "SERVER" in output and "smtp.chu-x.fr, mx2.chu-x.fr" in output and "as TLS server" in output

    code, output = run(config, "issue-org", "--cn", "DPI", "--structure-id", STRUCTURE_ID, "--out", str(out))
    assert code == 0, output
    code, output = run(config, "show", str(out / "DPI.crt"), "--usage", "server")
    assert code == 1 and "REFUSED (wrong_key_usage)" in output and "lacks serverAuth" in output


def test_expired_certificate_shows_refused(config: Path, tmp_path: Path) -> None:
    assert run(config, "init-dev")[0] == 0
    code, output = run(
        config,
        "issue-org",
        "--cn",
        "Short",
        "--structure-id",
        STRUCTURE_ID,
        "--out",
        str(tmp_path),
        "--days",
        "1",
    )
    assert code == 0, output
    assert (
        leaf(tmp_path / "Short.crt").not_valid_after_utc > leaf(tmp_path / "Short.crt").not_valid_before_utc
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["issue-person", "--national-id", "810001234567", "--first", "A", "--last", "B"],
            "fails its check digit (Luhn) (810001234565 would be a valid RPPS-based id)",
        ),
        (
            ["issue-person", "--national-id", "12345", "--first", "A", "--last", "B"],
            "national person id must be 8+RPPS",
        ),
        (["issue-person", "--national-id", PERSON_ID, "--first", " ", "--last", "B"], "first name is empty"),
        (
            ["issue-server", "--cn", "not a host", "--org", "X", "--structure-id", STRUCTURE_ID],
            "not a valid host name",
        ),
        (
            ["issue-server", "--cn", "a.test", "--org", "X", "--structure-id", "12"],
            "invalid structure id '12'",
        ),
        (["issue-org", "--cn", "X", "--structure-id", "9123"], "must start with 1 (FINESS)"),
        (
            ["issue-org", "--cn", "X", "--structure-id", STRUCTURE_ID, "--days", "0"],
            "--days must be at least 1",
        ),
    ],
)
def test_bad_input_exits_non_zero_naming_the_problem(
    config: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    assert run(config, "init-dev")[0] == 0
    code, output = run(config, *args, "--out", str(tmp_path / "out"))
    assert code != 0
    assert message in " ".join(output.split())


def test_issue_without_a_dev_pki(config: Path, tmp_path: Path) -> None:
    code, output = run(
        config, "issue-org", "--cn", "X", "--structure-id", STRUCTURE_ID, "--out", str(tmp_path)
    )
    assert code == 1
    assert "is not a dev PKI directory" in output and "pki init-dev" in output


def test_revoke_a_foreign_certificate(config: Path, dev_pki: DevPki) -> None:
    assert run(config, "init-dev")[0] == 0
    code, output = run(config, "revoke", str(dev_pki.server_cert))
    assert code == 1 and "was not issued by this dev PKI" in " ".join(output.split())


def test_show_errors(config: Path, tmp_path: Path, dev_pki: DevPki) -> None:
    code, output = run(config, "show", str(tmp_path / "missing.crt"))
    assert code == 1 and "certificate file not found" in output
    assert run(config, "init-dev")[0] == 0
    code, output = run(config, "show", str(dev_pki.server_cert))
    assert code == 1 and "REFUSED (unknown_issuer)" in output


def test_no_dev_ca_dir_configured(tmp_path: Path) -> None:
    path = tmp_path / "prod.toml"
    path.write_text(
        f'[instance]\nhostname = "mx.test"\n'
        f'[pki]\nserver_cert = "{tmp_path}/s.crt"\nserver_key = "{tmp_path}/s.key"\n'
    )
    code, output = run(path, "issue-org", "--cn", "X", "--structure-id", STRUCTURE_ID, "--out", str(tmp_path))
    assert code == 1 and "pki.dev_ca_dir is not set" in " ".join(output.split())
    code, output = run(path, "init-dev")
    assert code == 1 and "pki.dev_ca_dir is not set" in " ".join(output.split())
