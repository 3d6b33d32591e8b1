"""The inbound listener driven by swaks (a real, independent SMTP client) over STARTTLS."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

from smtp_support import LOCAL_DOMAIN, Inbound, Issued

SWAKS = shutil.which("swaks") or "/usr/bin/swaks"


async def swaks(inbound: Inbound, peer: Issued | None, *args: str) -> tuple[int, str]:
    command = [
        SWAKS,
        "--server", "127.0.0.1",
        "--port", str(inbound.port),
        "--ehlo", "mx.peer-a.test",
        "--tls",
        "--tls-verify",
        "--tls-ca-path", str(inbound.pki.ca.cert_path),
        "--tls-sni", "mx.hopital.test",
        "--timeout", "10",
    ]  # fmt: skip
    if peer is not None:
        command += ["--tls-cert", str(peer.cert_path), "--tls-key", str(peer.key_path)]
    process = await asyncio.create_subprocess_exec(
        *command, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, output.decode("utf-8", "replace")


async def test_swaks_with_client_certificate_delivers(inbound: Inbound, tmp_path: Path) -> None:
    data = tmp_path / "message.eml"
    body = (
        b"From: <dr.a@peer-a.test>\r\nTo: <jean.martin@hopital.test>\r\nSubject: swaks\r\n"
        b"X-MSS-NIL: swaks-test\r\n\r\nBonjour\r\n"
    )
    data.write_bytes(body)
    code, output = await swaks(
        inbound,
        inbound.pki.peer_a,
        "--from", "dr.a@peer-a.test",
        "--to", f"jean.martin@{LOCAL_DOMAIN}",
        "--data", str(data),
        "--pipeline",
    )  # fmt: skip
    assert code == 0, output
    assert "250 2.0.0 Ok " in output
    [(raw, envelope)] = inbound.sink.messages()
    assert body in raw  # swaks adds an empty line before the final dot
    assert envelope["recipients"][0]["address"] == f"jean.martin@{LOCAL_DOMAIN}"
    assert "PIPELINING" in output and "DSN" in output and "ENHANCEDSTATUSCODES" in output


async def test_swaks_without_client_certificate_is_refused(inbound: Inbound) -> None:
    code, output = await swaks(
        inbound, None, "--from", "dr.a@peer-a.test", "--to", f"jean.martin@{LOCAL_DOMAIN}"
    )
    assert code != 0
    assert "530 5.7.0 A TLS client certificate is required" in output
    assert inbound.sink.messages() == []


async def test_swaks_wrong_domain_is_refused(inbound: Inbound) -> None:
    code, output = await swaks(
        inbound, inbound.pki.peer_b, "--from", "dr.b@peer-a.test", "--to", f"jean.martin@{LOCAL_DOMAIN}"
    )
    assert code != 0
    assert "550 5.7.1 Sender not authorized" in output
