"""The Postfix peer operator used by the inter-operator tests is real and configured as MSSanté wants.

The other side is aiosmtplib (a client with or without a dev-PKI certificate) and an aiosmtpd server
requiring a client certificate (`server_tls_context(..., client_cert="required")`).
"""

from __future__ import annotations

import asyncio
import importlib
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
from aiosmtpd.smtp import SMTP as AiosmtpdSMTP
from aiosmtpd.smtp import Envelope, Session
from cryptography import x509
from cryptography.x509.oid import NameOID

from mssante_operator.identifiers import luhn_check_digit
from mssante_operator.pki.devpki import DevPki
from mssante_operator.pki.tls import client_tls_context, peer_certificate, server_tls_context
from pki_fixtures import SERVER_HOST, leaf, make_dev_pki
from postfix_peer import PostfixPeer, PostfixPeerError, postfix_peers, start_postfix_peer

__all__ = ["postfix_peers"]  # the fixture, imported for pytest

PEER_DOMAIN = "clinique-peer.mssante.test"
PEER_HOST = f"mail.{PEER_DOMAIN}"
PEER_STRUCTURE_ID = "169000001" + luhn_check_digit("69000001")
OUR_DOMAIN = SERVER_HOST.removeprefix("mail.")  # the dev server certificate's domain


def message(sender: str, recipient: str, body: bytes, *, nil: str = "LogicielTest/1.2.3") -> bytes:
    return (
        f"From: <{sender}>\r\nTo: <{recipient}>\r\nSubject: test peer\r\n"
        f"Message-ID: <{abs(hash(body))}@test>\r\nX-MSS-NIL: {nil}\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n\r\n"
    ).encode() + body


def split_message(raw: bytes) -> tuple[bytes, bytes]:
    """(headers, body) of a message as Postfix stores it in Maildir (LF line endings)."""
    headers, _, body = raw.partition(b"\n\n")
    return headers, body


BODY = (
    "Compte rendu d'hospitalisation — données de santé.\r\n"
    ".une ligne qui commence par un point (dot-stuffing)\r\n"
    "..deux points\r\n"
    "fin\r\n"
).encode()


@pytest.fixture
def peer_identity(dev_pki: DevPki, tmp_path: Path) -> tuple[Path, Path]:
    return dev_pki.issue_server(
        PEER_HOST, "CLINIQUE PEER DE TEST", PEER_STRUCTURE_ID, tmp_path / "peer-cert", name="peer"
    )


@pytest.fixture
def peer(
    postfix_peers: Callable[..., PostfixPeer], dev_pki: DevPki, peer_identity: tuple[Path, Path]
) -> PostfixPeer:
    cert, key = peer_identity
    return postfix_peers(
        hostname=PEER_HOST,
        domain=PEER_DOMAIN,
        server_cert=cert,
        server_key=key,
        ca_bundle=dev_pki.ca_bundle,
        mailboxes=["alice", "bob"],
    )


def client_context(pki: DevPki, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    """Verifies the peer against `pki` and presents `cert` (default: the dev server certificate,
    i.e. the operator of OUR_DOMAIN), as our relay does."""
    if cert is None:
        return client_tls_context(pki.pki_settings())
    return client_tls_context(pki.pki_settings(server_cert=cert, server_key=key))


def anonymous_context(pki: DevPki) -> ssl.SSLContext:
    """Verifies the server but presents no client certificate."""
    context = ssl.create_default_context(cafile=str(pki.ca_bundle))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


async def connect(peer: PostfixPeer, context: ssl.SSLContext, *, starttls: bool = True) -> aiosmtplib.SMTP:
    client = aiosmtplib.SMTP(
        hostname="127.0.0.1",
        port=peer.smtp_port,
        local_hostname=SERVER_HOST,
        start_tls=False,
        tls_context=context,
        timeout=10,
    )
    await client.connect()
    await client.ehlo()
    if starttls:
        await client.starttls(server_hostname=peer.hostname, tls_context=context)
        await client.ehlo()
    return client


# -- inbound: Postfix receiving from an operator -----------------------------------------------------------


async def test_delivers_to_maildir_over_mutual_tls(peer: PostfixPeer, dev_pki: DevPki) -> None:
    raw = message(f"medecin@{OUR_DOMAIN}", f"alice@{PEER_DOMAIN}", BODY, nil="DPI-Demo/4.2")
    client = await connect(peer, client_context(dev_pki))
    try:
        assert client.get_transport_info("ssl_object").version() in ("TLSv1.2", "TLSv1.3")
        errors, reply = await client.sendmail(
            f"medecin@{OUR_DOMAIN}", [f"alice@{PEER_DOMAIN}"], raw, mail_options=["BODY=8BITMIME"]
        )
        assert errors == {}
        assert reply.startswith("2.0.0 Ok: queued as ")
    finally:
        await client.quit()

    [stored] = await peer.wait_for_mail_async("alice")
    headers, body = split_message(stored)
    assert body == BODY.replace(b"\r\n", b"\n")  # byte for byte, dot-stuffing undone
    assert b"\nX-MSS-NIL: DPI-Demo/4.2\n" in headers
    sent_headers, _ = split_message(raw.replace(b"\r\n", b"\n"))
    assert headers.endswith(sent_headers)  # Postfix only prepends its own headers
    received = headers.split(b"\nReceived: ", 1)[1].split(b"\n", 4)
    received_text = b" ".join(received).decode()
    # Postfix records the verified client certificate in its Received header.
    assert f'Client CN "{SERVER_HOST}"' in received_text
    assert "verified OK" in received_text
    assert peer.messages("bob") == []
    assert peer.queue_ids() == []


async def test_delivers_to_several_mailboxes(peer: PostfixPeer, dev_pki: DevPki) -> None:
    client = await connect(peer, client_context(dev_pki))
    try:
        for _ in range(3):
            recipients = [f"alice@{PEER_DOMAIN}", f"bob@{PEER_DOMAIN}"]
            raw = message(f"medecin@{OUR_DOMAIN}", recipients[0], BODY)
            errors, _ = await client.sendmail(f"medecin@{OUR_DOMAIN}", recipients, raw)
            assert errors == {}
    finally:
        await client.quit()
    assert len(await peer.wait_for_mail_async("alice", count=3)) == 3
    assert len(await peer.wait_for_mail_async(f"bob@{PEER_DOMAIN}", count=3)) == 3


async def test_mail_before_starttls_is_refused(peer: PostfixPeer, dev_pki: DevPki) -> None:
    client = await connect(peer, client_context(dev_pki), starttls=False)
    try:
        assert client.supports_extension("starttls")
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
            await client.mail(f"medecin@{OUR_DOMAIN}")
        assert refused.value.code == 530
        assert refused.value.message.startswith("5.7.0 Must issue a STARTTLS command first")
    finally:
        client.close()


async def refusal_after_starttls(
    peer: PostfixPeer, context: ssl.SSLContext
) -> aiosmtplib.SMTPResponseException:
    """Postfix completes the handshake, then refuses an untrusted or absent client certificate."""
    client = aiosmtplib.SMTP(
        hostname="127.0.0.1",
        port=peer.smtp_port,
        local_hostname=SERVER_HOST,
        start_tls=False,
        tls_context=context,
        timeout=10,
    )
    await client.connect()
    try:
        await client.ehlo()
        await client.starttls(server_hostname=peer.hostname, tls_context=context)
        with pytest.raises(aiosmtplib.SMTPResponseException) as refused:
            await client.ehlo()
            await client.sendmail(
                f"medecin@{OUR_DOMAIN}", [f"alice@{PEER_DOMAIN}"], message("a@b.test", "c@d.test", BODY)
            )
        return refused.value
    finally:
        client.close()


async def test_client_without_certificate_is_refused(peer: PostfixPeer, dev_pki: DevPki) -> None:
    refused = await refusal_after_starttls(peer, anonymous_context(dev_pki))
    assert refused.code == 421
    assert refused.message.startswith("4.7.1")
    assert "certificate" in refused.message.lower()
    await wait_for_log(peer, "TLS from unknown[127.0.0.1]: No client certificate presented")
    assert peer.messages("alice") == []


async def test_client_certificate_from_another_ca_is_refused(
    peer: PostfixPeer, dev_pki: DevPki, tmp_path: Path
) -> None:
    other = make_dev_pki(tmp_path / "other-pki")  # same names as IGC-Santé TEST, different keys
    cert, key = other.issue_server("mail.imposteur.mssante.test", "IMPOSTEUR", "1750000018", tmp_path / "o")
    context = client_context(dev_pki, cert, key)  # trusts the real PKI, presents the other one
    refused = await refusal_after_starttls(peer, context)
    assert refused.code == 421
    assert refused.message.startswith("4.7.1")
    await wait_for_log(peer, "TLS from unknown[127.0.0.1]: Client certificate not trusted")
    assert "certificate verification failed for unknown[127.0.0.1]: untrusted issuer" in peer.logs()
    assert peer.messages("alice") == []


async def test_unknown_mailbox_and_relaying_are_refused(peer: PostfixPeer, dev_pki: DevPki) -> None:
    client = await connect(peer, client_context(dev_pki))
    try:
        await client.mail(f"medecin@{OUR_DOMAIN}")
        with pytest.raises(aiosmtplib.SMTPRecipientRefused) as unknown:
            await client.rcpt(f"nobody@{PEER_DOMAIN}")
        assert unknown.value.code == 550
        assert unknown.value.message.startswith("5.1.1")
        with pytest.raises(aiosmtplib.SMTPRecipientRefused) as relay:
            await client.rcpt("someone@elsewhere.mssante.test")
        assert relay.value.code == 554
        assert "Relay access denied" in relay.value.message
    finally:
        await client.quit()


async def test_optional_client_certificate_still_required_for_relaying(
    postfix_peers: Callable[..., PostfixPeer], dev_pki: DevPki, peer_identity: tuple[Path, Path]
) -> None:
    cert, key = peer_identity
    peer = postfix_peers(
        hostname=PEER_HOST,
        domain=PEER_DOMAIN,
        server_cert=cert,
        server_key=key,
        ca_bundle=dev_pki.ca_bundle,
        require_client_cert=False,
        relay_routes={OUR_DOMAIN: "[127.0.0.1]:9"},
        mailboxes=["alice"],
    )
    client = await connect(peer, anonymous_context(dev_pki))
    try:
        await client.mail("someone@example.test")
        await client.rcpt(f"alice@{PEER_DOMAIN}")  # its own mailboxes: fine without a certificate
        with pytest.raises(aiosmtplib.SMTPRecipientRefused) as relay:
            await client.rcpt(f"medecin@{OUR_DOMAIN}")
        assert relay.value.code == 554
    finally:
        await client.quit()


# -- outbound: Postfix relaying to an operator -------------------------------------------------------------


@dataclass
class Received:
    envelopes: list[tuple[str, list[str], bytes, x509.Certificate | None, str]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)


class RecordingHandler:
    def __init__(self, received: Received) -> None:
        self.received = received

    async def handle_DATA(self, server: AiosmtpdSMTP, session: Session, envelope: Envelope) -> str:
        ssl_object = session.ssl.get("ssl_object") if session.ssl else None
        assert isinstance(envelope.content, bytes)
        self.received.envelopes.append(
            (
                str(envelope.mail_from),
                list(envelope.rcpt_tos),
                envelope.content,
                peer_certificate(ssl_object),
                ssl_object.version() if ssl_object else "",
            )
        )
        self.received.arrived.set()
        return "250 2.0.0 accepted by the test operator"


async def start_operator(dev_pki: DevPki, port: int = 0) -> tuple[asyncio.Server, int, Received]:
    """An aiosmtpd listener like ours: STARTTLS required, client certificate required."""
    received = Received()
    context = server_tls_context(dev_pki.pki_settings(), client_cert="required")
    loop = asyncio.get_running_loop()

    def factory() -> AiosmtpdSMTP:
        return AiosmtpdSMTP(
            RecordingHandler(received),
            hostname=SERVER_HOST,
            tls_context=context,
            require_starttls=True,
            decode_data=False,
        )

    server = await loop.create_server(factory, "127.0.0.1", port, reuse_address=True)
    port = server.sockets[0].getsockname()[1]
    return server, port, received


async def wait_for_log(peer: PostfixPeer, text: str) -> None:
    try:
        async with asyncio.timeout(15):
            while True:
                if text in peer.logs():
                    return
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"{text!r} not logged within 15 s:\n{peer.log_tail()}") from None


async def inject(peer: PostfixPeer, dev_pki: DevPki, recipient: str, raw: bytes) -> None:
    client = await connect(peer, client_context(dev_pki))
    try:
        errors, _ = await client.sendmail(f"secretariat@{PEER_DOMAIN}", [recipient], raw)
        assert errors == {}
    finally:
        await client.quit()


async def test_relays_to_operator_presenting_its_client_certificate(
    postfix_peers: Callable[..., PostfixPeer], dev_pki: DevPki, peer_identity: tuple[Path, Path]
) -> None:
    server, port, received = await start_operator(dev_pki)
    try:
        cert, key = peer_identity
        peer = postfix_peers(
            hostname=PEER_HOST,
            domain=PEER_DOMAIN,
            server_cert=cert,
            server_key=key,
            ca_bundle=dev_pki.ca_bundle,
            relay_routes={OUR_DOMAIN: f"[127.0.0.1]:{port}"},
        )
        raw = message(f"secretariat@{PEER_DOMAIN}", f"medecin@{OUR_DOMAIN}", BODY, nil="Peer/1")
        await inject(peer, dev_pki, f"medecin@{OUR_DOMAIN}", raw)
        await asyncio.wait_for(received.arrived.wait(), 15)
    finally:
        server.close()
        await server.wait_closed()

    [(mail_from, rcpt_tos, content, client_cert, version)] = received.envelopes
    assert mail_from == f"secretariat@{PEER_DOMAIN}"
    assert rcpt_tos == [f"medecin@{OUR_DOMAIN}"]
    assert version in ("TLSv1.2", "TLSv1.3")
    assert client_cert is not None
    assert client_cert.subject == leaf(cert).subject
    assert client_cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == PEER_HOST
    headers, body = split_message(content.replace(b"\r\n", b"\n"))
    assert body == BODY.replace(b"\r\n", b"\n")
    assert b"\nX-MSS-NIL: Peer/1\n" in headers
    await wait_for_log(peer, "status=sent")
    assert f"Verified TLS connection established to 127.0.0.1[127.0.0.1]:{port}" in peer.logs()
    assert peer.queue_ids() == []


async def test_does_not_relay_to_a_server_with_the_wrong_name(
    postfix_peers: Callable[..., PostfixPeer], dev_pki: DevPki, peer_identity: tuple[Path, Path]
) -> None:
    """Postfix verifies the receiving operator's certificate: the dev server certificate names
    OUR_DOMAIN, so a route for another domain to the same server must not be used."""
    server, port, received = await start_operator(dev_pki)
    try:
        cert, key = peer_identity
        peer = postfix_peers(
            hostname=PEER_HOST,
            domain=PEER_DOMAIN,
            server_cert=cert,
            server_key=key,
            ca_bundle=dev_pki.ca_bundle,
            relay_routes={"autre-operateur.mssante.test": f"[127.0.0.1]:{port}"},
        )
        raw = message(f"secretariat@{PEER_DOMAIN}", "x@autre-operateur.mssante.test", BODY)
        await inject(peer, dev_pki, "x@autre-operateur.mssante.test", raw)
        await wait_for_log(peer, "status=deferred")
    finally:
        server.close()
        await server.wait_closed()
    assert "Server certificate not verified" in peer.logs()
    assert received.envelopes == []
    assert len(peer.queue_ids()) == 1


async def test_relay_tls_match_names_the_expected_server(
    postfix_peers: Callable[..., PostfixPeer], dev_pki: DevPki, peer_identity: tuple[Path, Path]
) -> None:
    """A route whose server certificate names another host than the domain, allowed explicitly."""
    server, port, received = await start_operator(dev_pki)
    try:
        cert, key = peer_identity
        peer = postfix_peers(
            hostname=PEER_HOST,
            domain=PEER_DOMAIN,
            server_cert=cert,
            server_key=key,
            ca_bundle=dev_pki.ca_bundle,
            relay_routes={"autre-operateur.mssante.test": f"[127.0.0.1]:{port}"},
            relay_tls_match={"autre-operateur.mssante.test": SERVER_HOST},
        )
        raw = message(f"secretariat@{PEER_DOMAIN}", "x@autre-operateur.mssante.test", BODY)
        await inject(peer, dev_pki, "x@autre-operateur.mssante.test", raw)
        await asyncio.wait_for(received.arrived.wait(), 15)
    finally:
        server.close()
        await server.wait_closed()
    assert received.envelopes[0][1] == ["x@autre-operateur.mssante.test"]


async def test_queues_while_operator_is_down_then_flush_delivers(
    postfix_peers: Callable[..., PostfixPeer], dev_pki: DevPki, peer_identity: tuple[Path, Path]
) -> None:
    with socket.socket() as probe:  # a port where nobody listens yet
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cert, key = peer_identity
    peer = postfix_peers(
        hostname=PEER_HOST,
        domain=PEER_DOMAIN,
        server_cert=cert,
        server_key=key,
        ca_bundle=dev_pki.ca_bundle,
        relay_routes={OUR_DOMAIN: f"[127.0.0.1]:{port}"},
        main_cf_overrides={"queue_run_delay": "300s", "minimal_backoff_time": "300s"},
    )
    raw = message(f"secretariat@{PEER_DOMAIN}", f"medecin@{OUR_DOMAIN}", BODY)
    await inject(peer, dev_pki, f"medecin@{OUR_DOMAIN}", raw)
    await wait_for_log(peer, "status=deferred (connect to 127.0.0.1[127.0.0.1]")
    [queue_id] = peer.queue_ids()
    assert peer.queue()[0]["recipients"][0]["address"] == f"medecin@{OUR_DOMAIN}"

    server, _, received = await start_operator(dev_pki, port)
    try:
        await asyncio.to_thread(peer.flush)  # only the flush can deliver it now: backoff is 300 s
        await asyncio.wait_for(received.arrived.wait(), 15)
    finally:
        server.close()
        await server.wait_closed()
    assert received.envelopes[0][2].replace(b"\r\n", b"\n").endswith(BODY.replace(b"\r\n", b"\n"))
    await wait_for_log(peer, f"{queue_id}: removed")
    assert peer.queue_ids() == []


# -- the helper itself -------------------------------------------------------------------------------------


def test_bad_arguments_are_named(tmp_path: Path, dev_pki: DevPki) -> None:
    common: dict[str, Any] = {
        "hostname": PEER_HOST,
        "domain": PEER_DOMAIN,
        "server_cert": dev_pki.server_cert,
        "server_key": dev_pki.server_key,
        "ca_bundle": dev_pki.ca_bundle,
    }
    with pytest.raises(PostfixPeerError, match=r"relay_routes\['x.test'\] = '127.0.0.1:25'"):
        start_postfix_peer(tmp_path / "a", **common, relay_routes={"x.test": "127.0.0.1:25"})
    with pytest.raises(PostfixPeerError, match="invalid local part 'a/b'"):
        start_postfix_peer(tmp_path / "b", **common, mailboxes=["a/b"])
    with pytest.raises(PostfixPeerError, match=r"ca_bundle: .* is not a file"):
        start_postfix_peer(tmp_path / "c", **{**common, "ca_bundle": tmp_path / "missing.pem"})


def test_busy_port_is_a_clear_error(tmp_path: Path, dev_pki: DevPki) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(PostfixPeerError, match=r"bind 127\.0\.0\.1 port \d+: Address already in use"):
            start_postfix_peer(
                tmp_path / "peer",
                hostname=PEER_HOST,
                domain=PEER_DOMAIN,
                server_cert=dev_pki.server_cert,
                server_key=dev_pki.server_key,
                ca_bundle=dev_pki.ca_bundle,
                smtp_port=busy.getsockname()[1],
            )
    assert "Address already in use" in (tmp_path / "peer" / "postfix-maillog.log").read_text()


def test_stop_releases_port_and_processes(
    postfix_peers: Callable[..., PostfixPeer], dev_pki: DevPki, peer_identity: tuple[Path, Path]
) -> None:
    cert, key = peer_identity
    peer = postfix_peers(
        hostname=PEER_HOST, domain=PEER_DOMAIN, server_cert=cert, server_key=key, ca_bundle=dev_pki.ca_bundle
    )
    assert peer.running()
    pid, port = peer.master_pid, peer.smtp_port
    peer.stop()
    peer.stop()  # idempotent
    assert not peer.running()
    assert not Path(f"/proc/{pid}/status").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))  # nobody listens there any more
        sock.listen()


async def test_postfix_baseline_benchmark_runs(
    tmp_path: Path, project_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bench/postfix_baseline.py (imported by bench/smtp_inbound.py) still works end to end."""
    monkeypatch.syspath_prepend(str(project_root / "bench"))
    bench = importlib.import_module("postfix_baseline")
    result = await bench.postfix_inbound_rate(
        connections=2, messages_per_connection=3, size=2048, work_dir=tmp_path, delivery_timeout=20
    )
    assert result["errors"] == []
    assert (result["messages"], result["accepted"], result["delivered"]) == (6, 6, 6)
    assert result["server"].startswith("postfix 3.")
    assert result["accepted_per_s"] > 0
    assert result["postfix_cpu_ms_per_message"] > 0
