"""The submission listener driven by independent mail clients from Debian: swaks and msmtp."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
from submission_support import CLAIRE, JEAN, PASSWORD, SERVER_HOST, World, message

SWAKS = shutil.which("swaks") or "/usr/bin/swaks"
MSMTP = shutil.which("msmtp") or "/usr/bin/msmtp"


async def run(*command: str, stdin: bytes | None = None) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(stdin), 60)
    assert process.returncode is not None
    return process.returncode, output.decode("utf-8", "replace")


async def swaks(
    world: World, cert: tuple[Path, Path] | None, *args: str, implicit: bool = False
) -> tuple[int, str]:
    command = [
        SWAKS,
        "--server", "127.0.0.1",
        "--port", str(world.implicit_port if implicit else world.starttls_port),
        "--ehlo", "poste-12.hopital.test",
        "--tls-on-connect" if implicit else "--tls",
        "--tls-ca-path", str(world.pki.ca_bundle),
        "--timeout", "20",
    ]  # fmt: skip
    if cert is not None:
        command += ["--tls-cert", str(cert[0]), "--tls-key", str(cert[1])]
    return await run(*command, *args)


@pytest.mark.skipif(not Path(SWAKS).exists(), reason="swaks is not installed (apt-get install swaks)")
async def test_swaks_with_client_certificate_and_password(world: World, tmp_path: Path) -> None:
    data = tmp_path / "message.eml"
    data.write_bytes(message(JEAN, [CLAIRE], extra=b"X-MSS-NIL: swaks-test\r\n"))
    code, output = await swaks(
        world,
        world.certs.person,
        "--from", JEAN, "--to", CLAIRE,
        "--auth", "PLAIN", "--auth-user", JEAN, "--auth-password", PASSWORD,
        "--data", str(data),
    )  # fmt: skip
    assert code == 0, output
    # The verified personal certificate enables EXTERNAL (swaks itself only speaks PLAIN here).
    assert "AUTH EXTERNAL OAUTHBEARER XOAUTH2 PLAIN LOGIN" in output
    assert "235 2.7.0" in output and "250 2.0.0 Ok " in output
    [stored] = await world.inbox(CLAIRE)
    assert b"X-MSS-NIL: swaks-test\r\n" in stored
    assert b"(authenticated as mailbox:" + JEAN.encode() + b" with PLAIN)" in stored
    [accepted] = world.audit.named("message.accepted")
    assert accepted.details["software"] == "swaks-test"
    # The presented personal certificate was verified (and shown in the audit trail).
    assert accepted.cert_subject is not None and "810000000009" in accepted.cert_subject


@pytest.mark.skipif(not Path(SWAKS).exists(), reason="swaks is not installed (apt-get install swaks)")
async def test_swaks_certificate_alone_is_not_authentication(world: World) -> None:
    code, output = await swaks(world, world.certs.person, "--from", JEAN, "--to", CLAIRE, implicit=True)
    assert code != 0
    assert "530 5.7.0 Authentication required" in output
    assert await world.inbox(CLAIRE) == []


def msmtp_config(world: World, path: Path, *, external: bool, starttls: bool) -> Path:
    lines = [
        "defaults",
        "logfile -",
        "account default",
        "host 127.0.0.1",
        f"port {world.starttls_port if starttls else world.implicit_port}",
        "tls on",
        f"tls_starttls {'on' if starttls else 'off'}",
        f"tls_trust_file {world.pki.ca_bundle}",
        # The server certificate names the MTA, the test dials 127.0.0.1.
        f"tls_host_override {SERVER_HOST}",
        "domain poste-12.hopital.test",
        f"from {JEAN}",
    ]
    if external:
        cert, key = world.certs.person
        lines += [f"tls_cert_file {cert}", f"tls_key_file {key}", "auth external", f"user {JEAN}"]
    else:
        lines += ["auth plain", f"user {JEAN}", f"password {PASSWORD}"]
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return path


@pytest.mark.skipif(not Path(MSMTP).exists(), reason="msmtp is not installed (apt-get install msmtp)")
@pytest.mark.parametrize("mode", ["external-implicit", "plain-starttls"])
async def test_msmtp_as_an_ordinary_mail_client(world: World, tmp_path: Path, mode: str) -> None:
    config = msmtp_config(
        world, tmp_path / "msmtprc", external=mode.startswith("external"), starttls=mode.endswith("starttls")
    )
    data = message(JEAN, [CLAIRE], extra=b"X-MSS-NIL: msmtp\r\n")
    code, output = await run(MSMTP, "-C", str(config), "-v", CLAIRE, stdin=data)
    assert code == 0, output
    [stored] = await world.inbox(CLAIRE)
    assert stored.endswith(data)
    mechanism = "EXTERNAL" if mode.startswith("external") else "PLAIN"
    [success] = world.audit.named("auth.success")
    assert success.details["mechanism"] == mechanism
