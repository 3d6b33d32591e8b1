# ruff: noqa: E501
"""Real clients over real TLS sockets: Python's imaplib against the session through the asyncio driver."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import imaplib
import ipaddress
import socket
import ssl
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from imap_memory_backend import MemoryBackend, MemoryStore
from mssante_operator.imap.backend import ConnectionInfo
from mssante_operator.imap.driver import DriverConfig, serve_connection
from mssante_operator.imap.session import Session, SessionConfig

USER = "jean.dupont@hopital-a.mssante.fr"
CA_FILE: Path | None = None  # set by the pki fixture, for external clients
MIXED = (
    b"From: labo@labo-c.mssante.fr\r\nTo: jean.dupont@hopital-a.mssante.fr\r\nSubject: =?UTF-8?Q?R=C3=A9sultats?=\r\n"
    b"Date: Mon, 6 Jan 2025 10:00:00 +0100\r\nMessage-ID: <r1@labo-c>\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n'
    b"Glyc\xc3\xa9mie normale.\r\n--b\r\nContent-Type: application/zip; name=IHE_XDM.ZIP\r\n"
    b"Content-Disposition: attachment; filename=IHE_XDM.ZIP\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    b"UEsDBBQAAAAIAA==\r\n--b--\r\n"
)


@dataclass
class Pki:
    server_ctx: ssl.SSLContext
    client_ctx: ssl.SSLContext
    cert_client_ctx: ssl.SSLContext


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, issuer: str, key: ec.EllipticCurvePrivateKey, signer: ec.EllipticCurvePrivateKey,
          *, ca: bool = False, san: bool = False) -> x509.Certificate:  # fmt: skip
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )  # fmt: skip
    if san:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
    return builder.sign(signer, hashes.SHA256())


def _pem(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> tuple[Path, Path]:
    cert_path, key_path = path.with_suffix(".crt"), path.with_suffix(".key")
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))  # fmt: skip
    return cert_path, key_path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("Test CA", "Test CA", ca_key, ca_key, ca=True)
    (d / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    global CA_FILE
    CA_FILE = d / "ca.crt"
    srv_key, cli_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    srv = _pem(d / "server", _cert("imap.test", "Test CA", srv_key, ca_key, san=True), srv_key)
    cli = _pem(d / "client", _cert("Dr Dupont", "Test CA", cli_key, ca_key), cli_key)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(*srv)
    server_ctx.load_verify_locations(d / "ca.crt")
    server_ctx.verify_mode = ssl.CERT_OPTIONAL
    client_ctx = ssl.create_default_context(cafile=str(d / "ca.crt"))
    cert_client_ctx = ssl.create_default_context(cafile=str(d / "ca.crt"))
    cert_client_ctx.load_cert_chain(*cli)
    return Pki(server_ctx, client_ctx, cert_client_ctx)


def conn_info(writer: asyncio.StreamWriter) -> ConnectionInfo:
    peer = writer.get_extra_info("peercert")
    subject = None
    if peer:
        subject = ",".join(f"{k}={v}" for rdn in peer["subject"] for k, v in rdn).replace("commonName", "CN")
    return ConnectionInfo("127.0.0.1", tls=True, client_cert_verified=bool(peer), client_cert_subject=subject)


class Changes:
    """A stand-in for the store's change notification: one event per folder id."""

    def __init__(self) -> None:
        self.events: dict[int, asyncio.Event] = {}

    async def wait(self, folder_id: int) -> None:
        event = self.events.setdefault(folder_id, asyncio.Event())
        await event.wait()
        event.clear()

    def notify(self, folder_id: int) -> None:
        self.events.setdefault(folder_id, asyncio.Event()).set()


@dataclass
class Server:
    store: MemoryStore
    port: int
    tls_port: int
    changes: Changes
    sessions: list[Session]


@pytest.fixture
async def server(pki: Pki) -> AsyncIterator[Server]:
    store = MemoryStore()
    store.add_account(USER, cert_subject="CN=Dr Dupont")
    for i in range(3):
        store.deliver(USER, MIXED.replace(b"<r1@", b"<r%d@" % i))
    changes = Changes()
    sessions: list[Session] = []

    def handler(implicit: bool) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], object]:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            conn = conn_info(writer) if implicit else ConnectionInfo("127.0.0.1")
            session = Session(MemoryBackend(store), conn, SessionConfig(starttls=not implicit))
            sessions.append(session)
            await serve_connection(reader, writer, session, tls_context=pki.server_ctx, conn_after_tls=conn_info,
                                   wait_for_change=changes.wait, config=DriverConfig(idle_timeout=10))  # fmt: skip

        return handle

    plain = await asyncio.start_server(handler(False), "127.0.0.1", 0)
    tls = await asyncio.start_server(handler(True), "127.0.0.1", 0, ssl=pki.server_ctx)
    yield Server(store, plain.sockets[0].getsockname()[1], tls.sockets[0].getsockname()[1], changes, sessions)
    for srv in (plain, tls):
        srv.close()
        await srv.wait_closed()


async def test_imaplib_session_over_starttls(server: Server, pki: Pki) -> None:
    def client() -> dict[str, object]:
        out: dict[str, object] = {}
        with imaplib.IMAP4("127.0.0.1", server.port) as imap:
            out["caps_before"] = imap.capabilities
            imap.starttls(ssl_context=pki.client_ctx)
            out["caps_tls"] = imap.capabilities
            out["login"] = imap.login(USER, "secret")
            out["list"] = imap.list()
            typ, exists = imap.select("INBOX")
            out["select"] = (typ, list(exists))  # imaplib keeps mutating the list it returned
            out["fetch"] = imap.fetch("1", "(FLAGS RFC822.SIZE BODY.PEEK[] BODYSTRUCTURE ENVELOPE)")
            out["section"] = imap.fetch("2", "(BODY.PEEK[2.MIME] BODY.PEEK[2])")
            out["uid_fetch"] = imap.uid("FETCH", "1:*", "(UID FLAGS)")
            out["store"] = imap.store("1", "+FLAGS", "(\\Seen)")
            out["search"] = imap.search(None, "SEEN")
            out["uid_search"] = imap.uid("SEARCH", "CHARSET", "UTF-8", "SUBJECT", "résultats".encode())
            out["append"] = imap.append("INBOX", "(\\Draft)", imaplib.Time2Internaldate(0), MIXED)
            out["copy"] = imap.copy("1:2", "Archive")
            out["status"] = imap.status("Archive", "(MESSAGES UIDNEXT)")
            out["create"] = imap.create("Envoy&AOk-s")
            out["quota"] = imap.getquotaroot("INBOX")
            out["namespace"] = imap.namespace()
            imap.store("3", "+FLAGS", "(\\Deleted)")
            out["expunge"] = imap.expunge()
            out["close"] = imap.close()
            out["logout"] = imap.logout()
        return out

    out = await asyncio.to_thread(client)
    assert "STARTTLS" in out["caps_before"] and "LOGINDISABLED" in out["caps_before"]  # type: ignore[operator]
    assert "AUTH=PLAIN" in out["caps_tls"] and "STARTTLS" not in out["caps_tls"]  # type: ignore[operator]
    assert out["login"][0] == "OK"  # type: ignore[index]
    assert b'(\\HasNoChildren \\Sent) "/" "Sent"' in out["list"][1]  # type: ignore[index]
    assert out["select"] == ("OK", [b"3"])
    typ, data = out["fetch"]  # type: ignore[misc]
    assert typ == "OK"
    (head, body), tail = data[0], data[1]
    assert head == b"1 (FLAGS () RFC822.SIZE 473 BODY[] {473}"
    assert body == MIXED.replace(b"<r1@", b"<r0@")
    assert b'BODYSTRUCTURE (("TEXT" "PLAIN" ("charset" "utf-8") NIL NIL "7BIT" 18 1 NIL NIL NIL NIL)' in tail
    assert (
        b'("APPLICATION" "ZIP" ("name" "IHE_XDM.ZIP") NIL NIL "BASE64" 16 NIL ("ATTACHMENT" ("filename" "IHE_XDM.ZIP")) NIL NIL)'
        in tail
    )
    typ, data = out["section"]  # type: ignore[misc]
    assert (
        data[0][1].startswith(b"Content-Type: application/zip") and data[1] == b' BODY[2] "UEsDBBQAAAAIAA==")'
    )
    assert out["uid_fetch"] == ("OK", [b"1 (UID 1 FLAGS ())", b"2 (UID 2 FLAGS ())", b"3 (UID 3 FLAGS ())"])
    assert out["store"] == ("OK", [b"1 (FLAGS (\\Seen))"])
    assert out["search"] == ("OK", [b"1"])
    assert out["uid_search"] == ("OK", [b"1 2 3"])
    assert out["append"][0] == "OK" and b"[APPENDUID" in out["append"][1][0]  # type: ignore[index]
    assert out["copy"][0] == "OK" and b"[COPYUID" in out["copy"][1][0]  # type: ignore[index]
    assert out["status"] == ("OK", [b'"Archive" (MESSAGES 2 UIDNEXT 3)'])
    assert out["create"][0] == "OK"  # type: ignore[index]
    assert out["quota"][0] == "OK"  # type: ignore[index]
    assert out["namespace"] == ("OK", [b'(("" "/")) NIL NIL'])
    assert out["expunge"] == ("OK", [b"3"])
    assert out["logout"][0] == "BYE"  # type: ignore[index]
    assert "Envoyés" in server.store.accounts[USER].folders


async def test_implicit_tls_and_sasl_external(server: Server, pki: Pki) -> None:
    def client() -> tuple[object, object, object]:
        with imaplib.IMAP4_SSL("127.0.0.1", server.tls_port, ssl_context=pki.cert_client_ctx) as imap:
            caps = imap.capabilities
            auth = imap.authenticate("EXTERNAL", lambda _challenge: b"")
            sel = imap.select("INBOX", readonly=True)
            imap.logout()
        return caps, auth, sel

    caps, auth, sel = await asyncio.to_thread(client)
    assert "AUTH=EXTERNAL" in caps and "STARTTLS" not in caps  # type: ignore[operator]
    assert auth[0] == "OK"  # type: ignore[index]
    assert sel == ("OK", [b"3"])

    def without_cert() -> object:
        with imaplib.IMAP4_SSL("127.0.0.1", server.tls_port, ssl_context=pki.client_ctx) as imap:
            return imap.capabilities

    assert "AUTH=EXTERNAL" not in await asyncio.to_thread(without_cert)  # type: ignore[operator]


def _tls_socket(port: int, ctx: ssl.SSLContext) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    return ctx.wrap_socket(raw, server_hostname="127.0.0.1")


def _read_until(sock: socket.socket | ssl.SSLSocket, marker: bytes) -> bytes:
    data = b""
    while marker not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


async def test_starttls_injection_is_discarded(server: Server, pki: Pki) -> None:
    def client() -> bytes:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        _read_until(sock, b"\r\n")
        sock.sendall(b"a STARTTLS\r\nb LOGIN jean.dupont@hopital-a.mssante.fr secret\r\nc CAPABILITY\r\n")
        reply = _read_until(sock, b"a OK")
        assert reply.startswith(b"a OK"), reply
        tls = pki.client_ctx.wrap_socket(sock, server_hostname="127.0.0.1")
        tls.sendall(b"d NOOP\r\n")
        return _read_until(tls, b"d OK")

    reply = await asyncio.to_thread(client)
    # Nothing sent in the clear after STARTTLS was executed: no answer to b or c.
    assert reply == b"d OK NOOP completed\r\n"


async def test_idle_sees_new_mail(server: Server, pki: Pki) -> None:
    idling = threading.Event()

    def client() -> bytes:
        sock = _tls_socket(server.tls_port, pki.client_ctx)
        _read_until(sock, b"\r\n")
        sock.sendall(b"a LOGIN jean.dupont@hopital-a.mssante.fr secret\r\nb SELECT INBOX\r\n")
        _read_until(sock, b"b OK")
        sock.sendall(b"c IDLE\r\n")
        assert _read_until(sock, b"+ idling\r\n").endswith(b"+ idling\r\n")
        idling.set()
        update = _read_until(sock, b"EXISTS\r\n")
        sock.sendall(b"DONE\r\n")
        update += _read_until(sock, b"c OK")
        sock.sendall(b"d LOGOUT\r\n")
        _read_until(sock, b"d OK")
        sock.close()
        return update

    task = asyncio.ensure_future(asyncio.to_thread(client))
    await asyncio.to_thread(idling.wait, 10)
    uid = server.store.deliver(USER, MIXED)
    folder_id = server.store.accounts[USER].folders["INBOX"].id
    loop = asyncio.get_running_loop()
    start = loop.time()
    server.changes.notify(folder_id)
    update = await asyncio.wait_for(task, 10)
    assert update == b"* 4 EXISTS\r\nc OK IDLE terminated\r\n"
    assert uid == 4 and loop.time() - start < 5


async def test_garbage_and_disconnects_do_not_hurt_the_server(server: Server, pki: Pki) -> None:
    def client() -> bytes:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        _read_until(sock, b"\r\n")
        sock.sendall(b"\x00\xff garbage {5}\r\n")
        first = _read_until(sock, b"\r\n")
        sock.sendall(b"a LOGIN {10}\r\n")  # and hang up without sending the literal
        _read_until(sock, b"\r\n")
        sock.close()
        return first

    first = await asyncio.to_thread(client)
    assert first.startswith(b"* BAD")

    def second() -> object:
        with imaplib.IMAP4("127.0.0.1", server.port) as imap:
            return imap.noop()

    assert (await asyncio.to_thread(second))[0] == "OK"  # type: ignore[index]


async def test_plaintext_left_in_the_stream_reader_is_dropped_before_tls() -> None:
    from mssante_operator.imap.driver import _discard_plaintext

    reader = asyncio.StreamReader()
    reader.feed_data(b"b LOGIN injected secret\r\n")
    _discard_plaintext(reader)
    reader.feed_data(b"c NOOP\r\n")
    assert await reader.readline() == b"c NOOP\r\n"


async def test_a_command_left_unfinished_times_out(pki: Pki) -> None:
    store = MemoryStore()
    store.add_account(USER)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = Session(MemoryBackend(store), ConnectionInfo("127.0.0.1", tls=True))
        await serve_connection(
            reader, writer, session, config=DriverConfig(command_timeout=0.5, autologout=30)
        )

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]

    def client() -> bytes:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        _read_until(sock, b"\r\n")
        sock.sendall(b"a LOGIN {100+}\r\nonly part of it")
        data = _read_until(sock, b"\r\n")
        sock.close()
        return data

    try:
        assert await asyncio.to_thread(client) == b"* BYE command not completed in time\r\n"
    finally:
        srv.close()
        await srv.wait_closed()


async def test_aioimaplib_session_with_idle(server: Server, pki: Pki) -> None:
    import aioimaplib

    client = aioimaplib.IMAP4_SSL("127.0.0.1", server.tls_port, ssl_context=pki.client_ctx, timeout=10)
    await client.wait_hello_from_server()
    assert (await client.login(USER, "secret")).result == "OK"
    select = await client.select("INBOX")
    assert select.result == "OK" and b"3 EXISTS" in select.lines
    fetched = await client.fetch("1:*", "(UID FLAGS)")
    assert fetched.result == "OK" and fetched.lines[:3] == [
        b"1 FETCH (UID 1 FLAGS ())",
        b"2 FETCH (UID 2 FLAGS ())",
        b"3 FETCH (UID 3 FLAGS ())",
    ]
    body = await client.uid("fetch", "2", "(BODY.PEEK[1])")
    assert body.result == "OK" and bytes(body.lines[1]) == "Glycémie normale.".encode()
    search = await client.uid_search("TEXT glycémie", charset="utf-8")
    assert search.result == "OK" and search.lines[0] == b"1 2 3"
    appended = await client.append(MIXED, mailbox="Sent", flags="(\\Seen)")
    assert appended.result == "OK" and b"APPENDUID" in appended.lines[-1]

    idle = await client.idle_start(timeout=10)
    for _ in range(500):  # until the server has entered IDLE
        if server.sessions[-1].idling:
            break
        await asyncio.sleep(0.01)
    server.store.deliver(USER, MIXED)
    server.changes.notify(server.store.accounts[USER].folders["INBOX"].id)
    pushed = await client.wait_server_push(timeout=5)
    assert pushed == [b"4 EXISTS"]
    client.idle_done()
    assert (await asyncio.wait_for(idle, 5)).result == "OK"
    assert (await client.logout()).result == "OK"

    bearer = aioimaplib.IMAP4_SSL("127.0.0.1", server.tls_port, ssl_context=pki.client_ctx, timeout=10)
    await bearer.wait_hello_from_server()
    server.store.accounts[USER].token = b"tok"
    assert (await bearer.xoauth2(USER, "tok")).result == "OK"  # type: ignore[arg-type]
    await bearer.logout()


MBSYNC_CONFIG = """IMAPAccount test
Host localhost
Port {port}
User {user}
Pass secret
SSLType IMAPS
CertificateFile {ca}
AuthMechs LOGIN

IMAPStore remote
Account test

MaildirStore local
Path {maildir}/
Inbox {maildir}/INBOX
SubFolders Verbatim

Channel sync
Far :remote:
Near :local:
Patterns *
Create Both
Expunge Both
SyncState *
Sync All
"""


async def _mbsync(config: Path) -> str:
    proc = await asyncio.create_subprocess_exec(
        "mbsync", "-c", str(config), "-a", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    text = out.decode("utf-8", "replace")
    assert proc.returncode == 0, text
    return text


def _maildir_messages(folder: Path) -> dict[str, bytes]:
    """Messages of a Maildir folder, in IMAP form: mbsync stores LF line ends and adds X-TUID."""
    out = {}
    for sub in ("cur", "new"):
        for path in sorted((folder / sub).glob("*")):
            lines = path.read_bytes().split(b"\n")
            out[path.name] = b"\r\n".join(line for line in lines if not line.startswith(b"X-TUID: "))
    return out


async def test_mbsync_syncs_both_ways(server: Server, pki: Pki, tmp_path: Path) -> None:
    maildir = tmp_path / "mail"
    maildir.mkdir()
    config = tmp_path / "mbsyncrc"
    config.write_text(MBSYNC_CONFIG.format(port=server.tls_port, user=USER, ca=CA_FILE, maildir=maildir))
    inbox = server.store.accounts[USER].folders["INBOX"]

    # 1. Pull: every folder is created locally, messages arrive byte for byte.
    await _mbsync(config)
    local = _maildir_messages(maildir / "INBOX")
    assert sorted(local.values()) == sorted(m.raw for m in inbox.messages.values())
    for name in ("Sent", "Drafts", "Trash", "Junk", "Archive"):
        assert (maildir / name / "cur").is_dir()

    # 2. Push: a flag set locally, a message deleted locally, a message written locally.
    names = sorted(local)
    cur = maildir / "INBOX" / "cur"
    first = next(p for p in (maildir / "INBOX").rglob("*") if p.name == names[0])
    first.rename(cur / (first.name.split(":2,")[0] + ":2,FS"))
    second = next(p for p in (maildir / "INBOX").rglob("*") if p.name == names[1])
    second.unlink()
    new_message = MIXED.replace(b"<r1@", b"<local@").replace(b"R=C3=A9sultats", b"Brouillon")
    (maildir / "INBOX" / "new" / "1700000000.1.local").write_bytes(new_message)
    await _mbsync(config)
    flags = sorted(tuple(sorted(m.flags)) for m in inbox.messages.values())
    assert ("\\Flagged", "\\Seen") in flags
    assert len(inbox.messages) == 3  # one deleted, one added
    uploaded = [m.raw for m in inbox.messages.values() if b"<local@" in m.raw]
    assert len(uploaded) == 1
    # mbsync sends CRLF and tags the message with X-TUID to find its UID; the rest is the message.
    assert b"\r\n".join(x for x in uploaded[0].split(b"\r\n") if not x.startswith(b"X-TUID: ")) == new_message

    # 3. Pull again: mail delivered on the server meanwhile, and a flag changed there.
    server.store.deliver(USER, MIXED.replace(b"<r1@", b"<late@"))
    some = min(inbox.messages)
    inbox.messages[some].flags.add("\\Answered")
    inbox.messages[some].modseq = inbox.bump()
    await _mbsync(config)
    local = _maildir_messages(maildir / "INBOX")
    assert len(local) == 4
    assert any(b"<late@" in body for body in local.values())
    assert any(":2," in name and "R" in name.split(":2,")[1] for name in local)


MUTTRC = """set folder = "imaps://{user}@localhost:{port}/"
set spoolfile = "+INBOX"
set imap_pass = "secret"
set ssl_ca_certificates_file = "{ca}"
set ssl_verify_host = yes
set header_cache = ""
set message_cachedir = ""
set imap_check_subscribed = no
set mail_check_stats = no
set sort = date
set confirmappend = no
set wait_key = no
set help = no
"""


async def _tmux(*args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        "tmux", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 20)
    return out.decode("utf-8", "replace")


async def _screen_until(session: str, text: str, seconds: float = 20) -> str:
    screen = ""
    for _ in range(int(seconds * 10)):
        screen = await _tmux("capture-pane", "-p", "-t", session)
        if text in screen:
            return screen
        await asyncio.sleep(0.1)
    raise AssertionError(f"{text!r} never appeared on the screen:\n{screen}")


async def test_neomutt_reads_a_message_and_saves_its_ihe_xdm_attachment(
    server: Server, pki: Pki, tmp_path: Path
) -> None:
    muttrc = tmp_path / "muttrc"
    muttrc.write_text(MUTTRC.format(user=USER.replace("@", "%40"), port=server.tls_port, ca=CA_FILE))
    saved = tmp_path / "IHE_XDM.ZIP"
    session = f"neomutt-{server.tls_port}"
    await _tmux("new-session", "-d", "-s", session, "-x", "160", "-y", "40",
                f"HOME={tmp_path} TERM=xterm neomutt -n -F {muttrc}")  # fmt: skip
    try:
        await _screen_until(session, "Résultats")  # the index, with the encoded-word subject decoded
        await _tmux("send-keys", "-t", session, "Enter")  # open the first message
        screen = await _screen_until(session, "Glycémie normale.")
        assert "labo@labo-c.mssante.fr" in screen
        await _tmux("send-keys", "-t", session, "v")  # the attachment menu, built from BODYSTRUCTURE
        screen = await _screen_until(session, "IHE_XDM.ZIP")
        assert "zip, base64" in screen and "text/plain, 7bit, utf-8" in screen
        await _tmux("send-keys", "-t", session, "j", "s")  # the second attachment, save
        await _screen_until(session, "Save to file")
        await _tmux("send-keys", "-t", session, "C-u", str(saved), "Enter")
        for _ in range(100):
            if saved.exists() and saved.stat().st_size:
                break
            await asyncio.sleep(0.1)
        assert saved.read_bytes() == base64.b64decode("UEsDBBQAAAAIAA==")
        assert any(audit[2] == 1 for audit in server.store.audit)  # the body read was audited
    finally:
        await _tmux("kill-session", "-t", session)
