"""`mssante-operator trust ...` run as a real process against a real store (and a real HTTPS server)."""

from __future__ import annotations

import asyncio
import ssl
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web
from typer.testing import CliRunner

from mssante_operator.cli import app
from trust_support import Issued, domaine, issue_server, make_ca, numbered_list, trust_xml

DEMO_DN = "CN=mail.hopital-demo.mssante.test,OU=1750000018,O=Hopital Demo,ST=Paris (75),C=FR"


@dataclass
class Result:
    code: int
    out: str
    err: str


@dataclass
class Cli:
    """Runs the command in-process (a worker thread, since the command runs its own event loop)."""

    root: Path
    config: Path

    async def __call__(self, *args: str) -> Result:
        runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1"})
        result = await asyncio.to_thread(runner.invoke, app, ["--config", str(self.config), *args])
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return Result(result.exit_code, result.stdout, result.stderr)

    async def process(self, *args: str) -> Result:
        """The real entry point, as an operator runs it."""
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "mssante_operator",
            "--config",
            str(self.config),
            *args,
            cwd=self.root,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={"COLUMNS": "200", "PATH": "/usr/bin:/bin", "NO_COLOR": "1"},
        )
        out, err = await process.communicate()
        assert process.returncode is not None
        return Result(process.returncode, out.decode(), err.decode())


@dataclass
class Https:
    url: str
    ca: Issued


@pytest.fixture
async def https(tmp_path: Path) -> AsyncIterator[Https]:
    ca, ca_key = make_ca(tmp_path, "CLI CA")
    cert = issue_server(tmp_path, ca, ca_key, cn="cli-server")
    body = numbered_list(6)

    async def answer(request: web.Request) -> web.StreamResponse:
        if request.headers.get("If-None-Match") == '"cli"':
            return web.Response(status=304)
        return web.Response(body=body, headers={"ETag": '"cli"'})

    app = web.Application()
    app.router.add_get("/liste.xml", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert.cert_path, cert.key_path)
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    try:
        yield Https(f"https://127.0.0.1:{runner.addresses[0][1]}/liste.xml", ca)
    finally:
        await runner.cleanup()


@pytest.fixture
async def cli(tmp_path: Path, store_url: str, https: Https) -> Cli:
    config = tmp_path / "config.toml"
    config.write_text(
        f"""
[instance]
hostname = "mail.hopital-demo.mssante.test"
[store]
url = "{store_url}"
[pki]
server_cert = "certs/server.crt"
server_key = "certs/server.key"
[logging]
level = "warning"
[trust]
url = "{https.url}"
ca_file = "{https.ca.cert_path}"
max_shrink = 0.2
""",
        encoding="utf-8",
    )
    runner = Cli(tmp_path, config)
    upgraded = await runner("db", "upgrade")
    assert upgraded.code == 0, upgraded.err
    return runner


async def test_sample_import_list_show_status(cli: Cli, tmp_path: Path) -> None:
    sample = tmp_path / "var" / "trust.xml"
    made = await cli(
        "trust",
        "generate-sample",
        "--out",
        str(sample),
        "--domain",
        f"hôpital-démo.mssante.test:{DEMO_DN}",
        "-d",
        "peer-a.mssante.test:CN=mx.peer-a.mssante.test,O=Peer A,C=FR",
        "-d",
        "peer-b.mssante.test:C=FR, O=Peer B, CN=mx.peer-b.mssante.test",
    )
    assert made.code == 0, made.err
    assert "wrote 3 entries" in made.err
    assert b"https://listeblanche.mssante.fr/schema" in sample.read_bytes()

    empty = await cli.process("trust", "list")
    assert empty.code == 1 and "no trust list imported yet" in empty.err

    imported = await cli("trust", "import", str(sample))
    assert imported.code == 0, imported.err
    assert "imported: imported 3 entries (0 rejected), previously 0" in imported.out
    again = await cli("trust", "import", str(sample))
    assert again.code == 0 and "unchanged" in again.out

    listed = await cli("trust", "list")
    assert listed.code == 0
    assert (
        "hôpital-démo.mssante.test" in listed.out and "CN=mx.peer-a.mssante.test,O=Peer A,C=FR" in listed.out
    )
    assert "3 entries, 3 domains" in listed.err
    filtered = await cli("trust", "list", "--domain-filter", "peer")
    assert "2 entries, 2 domains" in filtered.err and "hôpital" not in filtered.out

    shown = await cli("trust", "show", "HÔPITAL-DÉMO.mssante.test")
    assert shown.code == 0
    assert "(xn--hpital-dmo-i7a8j.mssante.test)" in shown.out
    assert DEMO_DN in shown.out
    missing = await cli("trust", "show", "gmail.com")
    assert missing.code == 1 and "gmail.com is not in the trust list" in missing.err
    bad = await cli("trust", "show", "bad_domain")
    assert bad.code == 1 and "not a valid domain name" in bad.err

    status = await cli("trust", "status")
    assert status.code == 0, status.out
    assert "entries       3 (3 domains, 3 DNs)" in status.out and "health        ok" in status.out


async def test_refusals(cli: Cli, tmp_path: Path) -> None:
    good = tmp_path / "good.xml"
    good.write_bytes(numbered_list(10))
    assert (await cli("trust", "import", str(good))).code == 0

    broken = tmp_path / "broken.xml"
    broken.write_bytes(numbered_list(10)[:-40])
    result = await cli("trust", "import", str(broken))
    assert result.code == 1 and "refused" in result.out and "not well-formed XML" in result.out

    small = tmp_path / "small.xml"
    small.write_bytes(numbered_list(5))
    result = await cli("trust", "import", str(small))
    assert result.code == 1 and "50% fewer than the current 10" in result.out
    forced = await cli("trust", "import", "--force", str(small))
    assert forced.code == 0 and "imported 5 entries" in forced.out

    partly = tmp_path / "partly.xml"
    partly.write_bytes(
        trust_xml(
            [domaine(f"op-{n}.fr", f"CN=mx.op-{n}.fr,C=FR") for n in range(5)] + [domaine("x.fr", None)]
        )
    )
    result = await cli("trust", "import", str(partly))
    assert result.code == 0
    assert (
        "1 entries rejected" in result.out
        and "line 9 (x.fr): missing or empty <DNCertificatOperateur>" in result.out
    )

    nothing = await cli("trust", "import")
    assert nothing.code == 1 and "give the XML FILE to import" in nothing.err
    absent = await cli("trust", "import", str(tmp_path / "absent.xml"))
    assert absent.code == 1 and "cannot read" in absent.err
    bad_pair = await cli("trust", "generate-sample", "--out", str(tmp_path / "s.xml"), "-d", "no-dn")
    assert bad_pair.code == 1 and "expected DOMAIN:DN" in bad_pair.err
    bad_dn = await cli("trust", "generate-sample", "--out", str(tmp_path / "s.xml"), "-d", "a.fr:CN=a,,")
    assert bad_dn.code == 1 and "expected an attribute type" in bad_dn.err


async def test_import_from_url(cli: Cli, https: Https) -> None:
    first = await cli("trust", "import", "--url")
    assert first.code == 0, first.err
    assert "imported 6 entries" in first.out
    second = await cli("trust", "import", "--url")
    assert second.code == 0 and "not-modified" in second.out and "304 Not Modified" in second.out
    explicit = await cli("trust", "import", "--url", https.url.replace("liste.xml", "absent.xml"))
    assert explicit.code == 1 and "cannot fetch the trust list" in explicit.err and "HTTP 404" in explicit.err
