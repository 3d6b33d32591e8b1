"""The IMAP session state machine, driven with bytes through an in-memory backend."""
# ruff: noqa: E501  (protocol transcripts read best on one line)

from __future__ import annotations

import base64
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imap_memory_backend import MemoryBackend, MemoryStore
from mssante_operator.imap.backend import ConnectionInfo
from mssante_operator.imap.session import Action, CloseConnection, Session, SessionConfig, State, UpgradeTLS

PLAIN = ConnectionInfo("192.0.2.1")
TLS = ConnectionInfo("192.0.2.1", tls=True)
CERT = ConnectionInfo("192.0.2.1", tls=True, client_cert_verified=True, client_cert_subject="CN=Dr Dupont")


def message(subject: str, body: str = "Bonjour\r\n", sender: str = "labo@labo-c.mssante.fr") -> bytes:
    return (
        f"From: {sender}\r\nTo: jean.dupont@hopital-a.mssante.fr\r\nSubject: {subject}\r\n"
        f"Date: Mon, 6 Jan 2025 10:00:00 +0100\r\nMessage-ID: <{subject.replace(' ', '.')}@x>\r\n\r\n{body}"
    ).encode()


class Client:
    def __init__(
        self, store: MemoryStore, conn: ConnectionInfo = TLS, config: SessionConfig | None = None
    ) -> None:
        self.backend = MemoryBackend(store)
        self.session = Session(self.backend, conn, config)
        self.actions: list[Action] = []
        self.chunks: list[bytes] = []

    async def send(self, data: bytes) -> str:
        self.session.feed(data)
        self.chunks = []
        async for item in self.session.process():
            if isinstance(item, bytes):
                self.chunks.append(item)
            else:
                self.actions.append(item)
        return b"".join(self.chunks).decode("utf-8", "replace")

    async def __call__(self, line: str) -> str:
        return await self.send(line.encode() + b"\r\n")

    async def login(self, user: str = "jean.dupont@hopital-a.mssante.fr") -> None:
        out = await self(f"L LOGIN {user} secret")
        assert "L OK" in out, out


@pytest.fixture
def store() -> MemoryStore:
    s = MemoryStore()
    s.add_account("jean.dupont@hopital-a.mssante.fr", cert_subject="CN=Dr Dupont", token=b"tok-jean")
    s.add_account("marie.curie@cabinet-b.mssante.fr")
    for i in range(1, 6):
        s.deliver("jean.dupont@hopital-a.mssante.fr", message(f"message {i}"))
    s.deliver("marie.curie@cabinet-b.mssante.fr", message("SECRET-OF-MARIE", "confidential MARIE-BODY\r\n"))
    return s


def caps(text: str) -> set[str]:
    m = re.search(r"CAPABILITY ([^\]\r]*)", text)
    assert m, text
    return set(m.group(1).split())


# ------------------------------------------------------------------------------------ capabilities


async def test_capabilities_per_state(store: MemoryStore) -> None:
    plain = Client(store, PLAIN)
    before_tls = caps(plain.session.greeting().decode())
    assert {"STARTTLS", "LOGINDISABLED", "IMAP4rev1", "IMAP4rev2", "SASL-IR", "LITERAL+"} <= before_tls
    assert not any(c.startswith("AUTH=") for c in before_tls)

    tls = Client(store, TLS)
    after_tls = caps(await tls("c CAPABILITY"))
    assert {"AUTH=PLAIN", "AUTH=LOGIN", "AUTH=OAUTHBEARER", "AUTH=XOAUTH2"} <= after_tls
    assert (
        "AUTH=EXTERNAL" not in after_tls and "STARTTLS" not in after_tls and "LOGINDISABLED" not in after_tls
    )

    cert = Client(store, CERT)
    assert "AUTH=EXTERNAL" in caps(cert.session.greeting().decode())

    nopw = Client(store, TLS, SessionConfig(allow_passwords=False))
    assert "AUTH=PLAIN" not in caps(nopw.session.greeting().decode())

    await tls.login()
    authed = caps(await tls("c CAPABILITY"))
    for cap in ("IDLE", "UIDPLUS", "MULTIAPPEND", "MOVE", "NAMESPACE", "UNSELECT", "CHILDREN", "LIST-EXTENDED", "LIST-STATUS",
                "SPECIAL-USE", "CONDSTORE", "QRESYNC", "ESEARCH", "STATUS=SIZE", "QUOTA", "ENABLE", "ID",
                "APPENDLIMIT=67108864"):  # fmt: skip
        assert cap in authed
    assert not any(c.startswith("AUTH=") for c in authed)


# ------------------------------------------------------------------------------------ authentication


async def test_login_is_disabled_before_tls(store: MemoryStore) -> None:
    c = Client(store, PLAIN)
    out = await c("a LOGIN jean.dupont@hopital-a.mssante.fr secret")
    assert out == "a NO [PRIVACYREQUIRED] LOGIN is disabled before STARTTLS\r\n"
    # A synchronising literal is refused before the password is sent.
    out = await c("b LOGIN {32}")
    assert out == "b NO [PRIVACYREQUIRED] LOGIN is disabled before STARTTLS\r\n"
    assert await c("c NOOP") == "c OK NOOP completed\r\n"
    out = await c("d AUTHENTICATE PLAIN AGpvZQBzZWNyZXQ=")
    assert out.startswith("d NO [PRIVACYREQUIRED]")
    assert c.session.state is State.NOT_AUTHENTICATED


async def test_starttls_discards_commands_pipelined_in_the_clear(store: MemoryStore) -> None:
    c = Client(store, PLAIN)
    out = await c.send(b"a STARTTLS\r\nb LOGIN jean.dupont@hopital-a.mssante.fr secret\r\n")
    assert out == "a OK begin TLS negotiation now\r\n"
    assert c.actions == [UpgradeTLS()]
    assert c.session.tls_started(TLS) == len(b"b LOGIN jean.dupont@hopital-a.mssante.fr secret\r\n")
    assert c.session.state is State.NOT_AUTHENTICATED
    assert "AUTH=PLAIN" in caps(await c("c CAPABILITY"))
    assert (await c("d STARTTLS")) == "d BAD TLS is already active\r\n"
    assert (await c("e NOOP")) == "e OK NOOP completed\r\n"


async def test_starttls_refused_on_implicit_tls_port(store: MemoryStore) -> None:
    c = Client(store, PLAIN, SessionConfig(starttls=False))
    assert "STARTTLS" not in caps(c.session.greeting().decode())
    out = await c.send(b"a STARTTLS\r\nb NOOP\r\n")
    assert out == "a BAD STARTTLS is not offered on this port\r\nb OK NOOP completed\r\n"


async def test_login(store: MemoryStore) -> None:
    c = Client(store)
    assert (await c("a LOGIN jean.dupont@hopital-a.mssante.fr wrong")) == (
        "a NO [AUTHENTICATIONFAILED] invalid credentials\r\n"
    )
    out = await c("b LOGIN jean.dupont@hopital-a.mssante.fr secret")
    assert out.startswith("b OK [CAPABILITY IMAP4rev1") and out.endswith("] logged in\r\n")
    assert c.session.state is State.AUTHENTICATED
    assert c.session.account == "jean.dupont@hopital-a.mssante.fr"
    assert (await c("c LOGIN x y")) == "c BAD LOGIN is not allowed once authenticated\r\n"


async def test_password_login_can_be_disabled(store: MemoryStore) -> None:
    c = Client(store, TLS, SessionConfig(allow_passwords=False))
    out = await c("a LOGIN jean.dupont@hopital-a.mssante.fr secret")
    assert out.startswith("a NO [CANNOT]")
    assert (await c("b AUTHENTICATE PLAIN")).startswith(
        "b NO [CANNOT] unsupported authentication mechanism PLAIN"
    )


async def test_authenticate_plain(store: MemoryStore) -> None:
    good = base64.b64encode(b"\0jean.dupont@hopital-a.mssante.fr\0secret").decode()
    c = Client(store)
    assert (await c("a AUTHENTICATE PLAIN")) == "+ \r\n"
    assert (await c(good)).startswith("a OK [CAPABILITY")

    c = Client(store)
    assert (await c(f"a AUTHENTICATE PLAIN {good}")).startswith("a OK [CAPABILITY")

    c = Client(store)
    bad = base64.b64encode(b"\0jean.dupont@hopital-a.mssante.fr\0nope").decode()
    assert (await c(f"a AUTHENTICATE PLAIN {bad}")) == "a NO [AUTHENTICATIONFAILED] invalid credentials\r\n"
    assert (await c("b AUTHENTICATE PLAIN =")) == "b BAD malformed PLAIN authentication data\r\n"
    await c("c AUTHENTICATE PLAIN")
    assert (await c("*")) == "c BAD AUTHENTICATE cancelled by the client\r\n"
    await c("d AUTHENTICATE PLAIN")
    assert (await c("%%%")) == "d BAD AUTHENTICATE response is not valid base64\r\n"
    assert (await c("e NOOP")) == "e OK NOOP completed\r\n"


async def test_authenticate_login_mechanism(store: MemoryStore) -> None:
    c = Client(store)
    assert (await c("a AUTHENTICATE LOGIN")) == "+ VXNlcm5hbWU6\r\n"
    assert (await c(base64.b64encode(b"jean.dupont@hopital-a.mssante.fr").decode())) == "+ UGFzc3dvcmQ6\r\n"
    assert (await c(base64.b64encode(b"secret").decode())).startswith("a OK")


async def test_authenticate_external_needs_a_verified_certificate(store: MemoryStore) -> None:
    c = Client(store, TLS)
    assert (await c("a AUTHENTICATE EXTERNAL =")) == (
        "a NO [AUTHENTICATIONFAILED] EXTERNAL needs a verified client certificate\r\n"
    )
    c = Client(store, CERT)
    assert (await c("a AUTHENTICATE EXTERNAL =")).startswith("a OK")
    c = Client(store, CERT)
    other = base64.b64encode(b"marie.curie@cabinet-b.mssante.fr").decode()
    assert (await c(f"a AUTHENTICATE EXTERNAL {other}")) == (
        "a NO [AUTHORIZATIONFAILED] certificate not authorised for that mailbox\r\n"
    )


async def test_bearer_tokens(store: MemoryStore) -> None:
    c = Client(store)
    xoauth = base64.b64encode(
        b"user=jean.dupont@hopital-a.mssante.fr\x01auth=Bearer tok-jean\x01\x01"
    ).decode()
    assert (await c(f"a AUTHENTICATE XOAUTH2 {xoauth}")).startswith("a OK")
    c = Client(store)
    good = base64.b64encode(
        b"n,a=jean.dupont@hopital-a.mssante.fr,\x01host=x\x01auth=Bearer tok-jean\x01\x01"
    ).decode()
    assert (await c(f"a AUTHENTICATE OAUTHBEARER {good}")).startswith("a OK")
    c = Client(store)
    bad = base64.b64encode(b"n,,\x01auth=Bearer nope\x01\x01").decode()
    challenge = await c(f"a AUTHENTICATE OAUTHBEARER {bad}")
    assert challenge.startswith("+ ")
    assert b"invalid_token" in base64.b64decode(challenge[2:].strip())
    assert (await c("AQ==")) == "a NO [AUTHENTICATIONFAILED] invalid bearer token\r\n"
    garbage = base64.b64encode(b"no separator").decode()
    assert (await c(f"b AUTHENTICATE XOAUTH2 {garbage}")) == "b BAD malformed XOAUTH2 authentication data\r\n"


# ------------------------------------------------------------------------------------ states & errors


async def test_commands_in_the_wrong_state(store: MemoryStore) -> None:
    c = Client(store)
    assert (
        await c("a FETCH 1 FLAGS")
    ) == "a BAD FETCH needs authentication first (LOGIN or AUTHENTICATE)\r\n"
    assert (
        await c("b SELECT INBOX")
    ) == "b BAD SELECT needs authentication first (LOGIN or AUTHENTICATE)\r\n"
    assert (
        await c("c APPEND INBOX {5}")
    ) == "c BAD APPEND needs authentication first (LOGIN or AUTHENTICATE)\r\n"
    assert (await c("d NOOP")) == "d OK NOOP completed\r\n"
    await c.login()
    assert (
        await c("e FETCH 1 FLAGS")
    ) == "e BAD FETCH needs a selected mailbox (SELECT or EXAMINE first)\r\n"
    assert (await c("f EXPUNGE")).startswith("f BAD EXPUNGE needs a selected mailbox")
    await c("g SELECT INBOX")
    assert (await c("h ENABLE CONDSTORE")) == "h BAD ENABLE is only allowed before a mailbox is selected\r\n"


async def test_parse_errors_and_the_bad_command_limit(store: MemoryStore) -> None:
    c = Client(store, TLS, SessionConfig(max_bad_commands=3))
    assert (await c("a FROB")) == "a BAD unknown command 'FROB'\r\n"
    assert (await c("")) == "* BAD empty command line\r\n"
    assert (await c("b NOOP")) == "b OK NOOP completed\r\n"  # a good command resets the count
    await c("x1 FROB")
    await c("x2 FROB")
    out = await c("x3 FROB")
    assert out == "x3 BAD unknown command 'FROB'\r\n* BYE too many invalid commands\r\n"
    assert c.actions == [CloseConnection("too many invalid commands")]
    assert c.session.state is State.LOGOUT


async def test_fatal_literal_closes(store: MemoryStore) -> None:
    c = Client(store, TLS, SessionConfig(append_limit=100))
    await c.login()
    out = await c.send(b"a APPEND INBOX {1000+}\r\n" + b"x" * 10)
    assert out.startswith("a BAD [TOOBIG] message of 1000 octets exceeds the limit of 100")
    assert "* BYE" in out and isinstance(c.actions[-1], CloseConnection)
    c = Client(store, TLS, SessionConfig(append_limit=100))
    await c.login()
    assert (
        await c("b APPEND INBOX {1000}")
    ) == "b NO [TOOBIG] message of 1000 octets exceeds the limit of 100\r\n"


async def test_logout(store: MemoryStore) -> None:
    c = Client(store)
    out = await c.send(b"a LOGOUT\r\nb NOOP\r\n")
    assert out == "* BYE logging out\r\na OK LOGOUT completed\r\n"
    assert c.actions == [CloseConnection("logout")]


async def test_backend_failure_is_a_no_not_a_crash(store: MemoryStore) -> None:
    c = Client(store)
    c.backend.fail_next = RuntimeError("database is down")
    assert (await c("a LOGIN x y")) == "a NO [SERVERBUG] internal server error\r\n"
    assert (await c("b NOOP")) == "b OK NOOP completed\r\n"


async def test_overloaded_backend_answers_unavailable_so_clients_retry(store: MemoryStore) -> None:
    class PoolExhausted(Exception):
        pass

    c = Client(store)
    c.backend.transient_errors = (PoolExhausted,)  # type: ignore[attr-defined]
    c.backend.fail_next = PoolExhausted("QueuePool limit reached, connection timed out")
    assert (await c("a LOGIN x y")) == "a NO [UNAVAILABLE] server busy, try again\r\n"
    c.backend.fail_next = RuntimeError("a bug")
    assert (await c("b LOGIN x y")) == "b NO [SERVERBUG] internal server error\r\n"
    assert (await c("c NOOP")) == "c OK NOOP completed\r\n"


async def test_id_namespace_quota(store: MemoryStore) -> None:
    c = Client(store)
    assert (
        await c('a ID ("name" "Thunderbird")')
    ) == '* ID ("name" "mssante-operator" "version" "0.1.0")\r\na OK ID completed\r\n'
    await c.login()
    assert (await c("b NAMESPACE")) == '* NAMESPACE (("" "/")) NIL NIL\r\nb OK NAMESPACE completed\r\n'
    out = await c("c GETQUOTAROOT INBOX")
    assert out.startswith('* QUOTAROOT "INBOX" ""\r\n* QUOTA "" (STORAGE 1 10240)\r\n')
    assert (await c('d GETQUOTA "x"')).startswith("d NO [NONEXISTENT]")
    assert (await c('e GETQUOTA ""')).startswith('* QUOTA "" (STORAGE')
    assert (await c('f SETQUOTA "" (STORAGE 1)')) == "f NO [NOPERM] quotas are set by the operator\r\n"


# ------------------------------------------------------------------------------------ mailboxes


async def test_list_variants(store: MemoryStore) -> None:
    c = Client(store)
    await c.login()
    assert (await c('a LIST "" ""')) == '* LIST (\\Noselect) "/" ""\r\na OK LIST completed\r\n'
    await c('b CREATE "Projets/Réseau"')
    await c("b2 CREATE Projets")
    out = await c('c LIST "" *')
    assert out.splitlines(keepends=True)[0] == '* LIST (\\HasNoChildren) "/" "INBOX"\r\n'
    assert '* LIST (\\HasNoChildren \\Sent) "/" "Sent"\r\n' in out
    assert '* LIST (\\HasChildren) "/" "Projets"\r\n' in out
    assert '* LIST (\\HasNoChildren) "/" "Projets/R&AOk-seau"\r\n' in out
    out = await c('d LIST "" %')
    assert "Projets/R" not in out and '"Projets"' in out
    out = await c('e LIST (SPECIAL-USE) "" *')
    assert out.count("* LIST") == 5 and "INBOX" not in out
    out = await c('f LIST "" (INBOX Sent) RETURN (STATUS (MESSAGES UNSEEN))')
    assert out.splitlines()[:4] == [
        '* LIST (\\HasNoChildren) "/" "INBOX"', '* STATUS "INBOX" (MESSAGES 5 UNSEEN 5)',
        '* LIST (\\HasNoChildren \\Sent) "/" "Sent"', '* STATUS "Sent" (MESSAGES 0 UNSEEN 0)',
    ]  # fmt: skip
    await c("g UNSUBSCRIBE Projets")
    out = await c('h LIST (SUBSCRIBED RECURSIVEMATCH) "" *')
    assert '* LIST (\\HasChildren) "/" "Projets" ("CHILDINFO" ("SUBSCRIBED"))' in out
    assert '"Projets/R&AOk-seau"' in out and "\\Subscribed" in out
    out = await c('i LSUB "" *')
    assert '* LSUB () "/" "INBOX"' in out and '"Projets"' not in out
    out = await c('j LIST "" inbox')
    assert '"INBOX"' in out


async def test_create_delete_rename_subscribe(store: MemoryStore) -> None:
    c = Client(store)
    await c.login()
    assert (await c("a CREATE INBOX")) == "a NO [ALREADYEXISTS] INBOX always exists\r\n"
    assert (await c("b CREATE Projets/")) == "b OK CREATE completed\r\n"
    assert (await c("c CREATE Projets")) == "c NO [ALREADYEXISTS] Projets already exists\r\n"
    assert (await c("d CREATE Envois (USE (\\sent))")) == "d OK CREATE completed\r\n"
    assert '\\Sent) "/" "Envois"' in await c('e LIST "" Envois')
    assert (
        await c("f CREATE X (USE (\\Bogus))")
    ) == "f NO [USEATTR] \\Bogus is not a special-use attribute\r\n"
    assert (await c("g RENAME Projets Dossiers")) == "g OK RENAME completed\r\n"
    assert (await c("h DELETE Projets")) == "h NO [NONEXISTENT] no mailbox 'Projets'\r\n"
    assert (await c("i DELETE INBOX")) == "i NO [CANNOT] INBOX cannot be deleted\r\n"
    assert (await c("j DELETE Dossiers")) == "j OK DELETE completed\r\n"
    assert (await c("k SUBSCRIBE Sent")) == "k OK SUBSCRIBE completed\r\n"


async def test_status(store: MemoryStore) -> None:
    c = Client(store)
    await c.login()
    out = await c(
        "a STATUS INBOX (MESSAGES UIDNEXT UIDVALIDITY UNSEEN SIZE HIGHESTMODSEQ RECENT APPENDLIMIT)"
    )
    assert re.match(
        r'\* STATUS "INBOX" \(MESSAGES 5 UIDNEXT 6 UIDVALIDITY \d+ UNSEEN 5 SIZE \d+ HIGHESTMODSEQ 6 RECENT 0 APPENDLIMIT 67108864\)\r\na OK',
        out,
    )
    assert (await c("b STATUS Nope (MESSAGES)")) == "b NO [NONEXISTENT] no mailbox 'Nope'\r\n"


async def test_select_and_examine(store: MemoryStore) -> None:
    c = Client(store)
    await c.login()
    out = await c("a SELECT INBOX")
    lines = out.splitlines()
    assert lines[0] == "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)"
    assert lines[1] == "* 5 EXISTS"
    assert lines[2] == "* 0 RECENT"
    assert (
        lines[3]
        == "* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] flags clients can change"
    )
    assert re.fullmatch(r"\* OK \[UIDVALIDITY \d+\] UIDs valid", lines[4])
    assert lines[5] == "* OK [UIDNEXT 6] predicted next UID"
    assert lines[6] == "* OK [HIGHESTMODSEQ 6] highest mod-sequence"
    assert lines[7] == "* OK [UNSEEN 1] first unseen message"
    assert lines[8] == "a OK [READ-WRITE] SELECT completed"
    assert c.session.state is State.SELECTED
    out = await c("b EXAMINE INBOX")
    assert "* OK [PERMANENTFLAGS ()]" in out and out.endswith("b OK [READ-ONLY] EXAMINE completed\r\n")
    assert (await c("c STORE 1 +FLAGS (\\Seen)")) == "c NO [READ-ONLY] the mailbox is read-only (EXAMINE)\r\n"
    assert (await c("d SELECT Nope")) == "d NO [NONEXISTENT] no mailbox 'Nope'\r\n"
    assert c.session.state is State.AUTHENTICATED


# ------------------------------------------------------------------------------------ selected state


async def selected(store: MemoryStore, *, enable: str = "") -> Client:
    c = Client(store)
    await c.login()
    if enable:
        await c(f"e ENABLE {enable}")
    out = await c("s SELECT INBOX")
    assert "s OK" in out
    return c


async def test_fetch(store: MemoryStore) -> None:
    c = await selected(store)
    out = await c("a FETCH 1:2 (FLAGS RFC822.SIZE)")
    size = len(message("message 1"))
    assert (
        out
        == f"* 1 FETCH (FLAGS () RFC822.SIZE {size})\r\n* 2 FETCH (FLAGS () RFC822.SIZE {size})\r\na OK FETCH completed\r\n"
    )
    out = await c("b UID FETCH 3 (ENVELOPE)")
    assert out.startswith(
        '* 3 FETCH (UID 3 ENVELOPE ("Mon, 6 Jan 2025 10:00:00 +0100" "message 3" ((NIL NIL "labo" "labo-c.mssante.fr"))'
    )
    out = await c("c FETCH 4 (BODYSTRUCTURE INTERNALDATE)")
    assert out.startswith(
        '* 4 FETCH (BODYSTRUCTURE ("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 9 1 NIL NIL NIL NIL) INTERNALDATE "06-Jan-2025 10:00:00 +0000")'
    )
    assert store.audit == []  # metadata and headers only
    out = await c("d FETCH 1 (BODY.PEEK[TEXT] BODY.PEEK[HEADER.FIELDS (Subject)])")
    assert (
        out
        == "* 1 FETCH (BODY[TEXT] {9}\r\nBonjour\r\n BODY[HEADER.FIELDS (Subject)] {22}\r\nSubject: message 1\r\n\r\n)\r\nd OK FETCH completed\r\n"
    )
    assert store.audit == [("jean.dupont@hopital-a.mssante.fr", "INBOX", 1)]
    assert "\\Seen" not in (await c("e FETCH 1 FLAGS"))
    out = await c("f FETCH 1 BODY[]<0.4>")
    assert out == '* 1 FETCH (BODY[]<0> "From" FLAGS (\\Seen))\r\nf OK FETCH completed\r\n'
    out = await c("g FETCH 1 (FLAGS BODY[1])")
    assert out == "* 1 FETCH (FLAGS (\\Seen) BODY[1] {9}\r\nBonjour\r\n)\r\ng OK FETCH completed\r\n"
    assert (
        await c("h FETCH 9 FLAGS")
    ) == "h BAD message sequence number 9 does not exist (the mailbox has 5 messages)\r\n"
    assert (await c("i UID FETCH 9:20 FLAGS")) == "i OK FETCH completed\r\n"
    out = await c("j FETCH * (UID BODY[2] RFC822.HEADER)")
    assert out.startswith("* 5 FETCH (UID 5 BODY[2] NIL RFC822.HEADER {")


async def test_large_bodies_are_streamed(store: MemoryStore) -> None:
    big = message("big", "x" * 300_000 + "\r\n")
    uid = store.deliver("jean.dupont@hopital-a.mssante.fr", big)
    c = await selected(store)
    out = await c(f"a UID FETCH {uid} BODY.PEEK[]")
    assert out == f"* 6 FETCH (UID {uid} BODY[] {{{len(big)}}}\r\n{big.decode()})\r\na OK FETCH completed\r\n"
    assert len(c.chunks) > 5 and max(len(ch) for ch in c.chunks) <= 65536


async def test_binary(store: MemoryStore) -> None:
    raw = (b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: application/zip; name=IHE_XDM.ZIP\r\n"
           b"Content-Transfer-Encoding: base64\r\n\r\nUEsDBAAA\r\n--b\r\nContent-Transfer-Encoding: x-weird\r\n\r\nzz\r\n--b--\r\n")  # fmt: skip
    uid = store.deliver("jean.dupont@hopital-a.mssante.fr", raw)
    c = await selected(store)
    out = await c(f"a UID FETCH {uid} (BINARY.PEEK[1] BINARY.SIZE[1])")
    assert (
        out
        == f"* 6 FETCH (UID {uid} BINARY[1] ~{{6}}\r\nPK\x03\x04\x00\x00 BINARY.SIZE[1] 6)\r\na OK FETCH completed\r\n"
    )
    out = await c(f"b UID FETCH {uid} BINARY.PEEK[2]")
    assert out.endswith("b NO [UNKNOWN-CTE] unknown Content-Transfer-Encoding x-weird\r\n")


async def test_store(store: MemoryStore) -> None:
    c = await selected(store)
    assert (await c("a STORE 1:2 +FLAGS (\\Flagged)")) == (
        "* 1 FETCH (FLAGS (\\Flagged))\r\n* 2 FETCH (FLAGS (\\Flagged))\r\na OK STORE completed\r\n"
    )
    assert (await c("b UID STORE 2 -FLAGS.SILENT (\\Flagged)")) == "b OK STORE completed\r\n"
    assert (
        await c("c STORE 3 FLAGS ($Urgent \\Seen)")
    ) == "* 3 FETCH (FLAGS ($Urgent \\Seen))\r\nc OK STORE completed\r\n"
    # Own changes are not reported again.
    assert (await c("d NOOP")) == "d OK NOOP completed\r\n"


async def test_conditional_store(store: MemoryStore) -> None:
    c = await selected(store, enable="CONDSTORE")
    out = await c("a UID STORE 1,2 (UNCHANGEDSINCE 3) +FLAGS.SILENT (\\Deleted)")
    # UID 1 has modseq 2 (kept), UID 2 modseq 3 (kept) -> both change; then a second round conflicts.
    assert out == "* 1 FETCH (UID 1 MODSEQ (7))\r\n* 2 FETCH (UID 2 MODSEQ (8))\r\na OK STORE completed\r\n"
    out = await c("b STORE 1:3 (UNCHANGEDSINCE 6) +FLAGS (\\Seen)")
    assert (
        out
        == "* 3 FETCH (FLAGS (\\Seen) MODSEQ (9))\r\nb OK [MODIFIED 1:2] conditional STORE failed for some messages\r\n"
    )
    out = await c("c FETCH 1:* (FLAGS) (CHANGEDSINCE 8)")
    assert out == "* 3 FETCH (FLAGS (\\Seen) MODSEQ (9))\r\nc OK FETCH completed\r\n"


async def test_expunge_sends_correct_sequence_numbers(store: MemoryStore) -> None:
    c = await selected(store)
    await c("a STORE 2,4 +FLAGS.SILENT (\\Deleted)")
    assert (await c("b EXPUNGE")) == "* 4 EXPUNGE\r\n* 2 EXPUNGE\r\nb OK EXPUNGE completed\r\n"
    out = await c("c FETCH 1:* UID")
    assert out == "* 1 FETCH (UID 1)\r\n* 2 FETCH (UID 3)\r\n* 3 FETCH (UID 5)\r\nc OK FETCH completed\r\n"
    await c("d STORE 1:3 +FLAGS.SILENT (\\Deleted)")
    assert (await c("e UID EXPUNGE 3:5")) == "* 3 EXPUNGE\r\n* 2 EXPUNGE\r\ne OK EXPUNGE completed\r\n"
    assert (await c("f FETCH 1:* UID")) == "* 1 FETCH (UID 1)\r\nf OK FETCH completed\r\n"
    out = await c("g CLOSE")
    assert out == "g OK CLOSE completed\r\n"
    assert len(store.accounts["jean.dupont@hopital-a.mssante.fr"].folders["INBOX"].messages) == 0


async def test_unselect_does_not_expunge(store: MemoryStore) -> None:
    c = await selected(store)
    await c("a STORE 1 +FLAGS.SILENT (\\Deleted)")
    assert (await c("b UNSELECT")) == "b OK UNSELECT completed\r\n"
    assert len(store.accounts["jean.dupont@hopital-a.mssante.fr"].folders["INBOX"].messages) == 5


async def test_concurrent_sessions_see_each_others_changes(store: MemoryStore) -> None:
    a = await selected(store)
    b = await selected(store)
    await b("x STORE 2 +FLAGS.SILENT (\\Seen)")
    await b("y STORE 3,5 +FLAGS.SILENT (\\Deleted)")
    await b("z EXPUNGE")
    store.deliver("jean.dupont@hopital-a.mssante.fr", message("new one"))
    # FETCH, STORE and SEARCH must not send EXPUNGE; flag changes and new mail are fine.
    out = await a("a1 FETCH 1 FLAGS")
    assert (
        out
        == "* 1 FETCH (FLAGS ())\r\n* 2 FETCH (UID 2 FLAGS (\\Seen))\r\n* 6 EXISTS\r\na1 OK FETCH completed\r\n"
    )
    # Sequence numbers are still those the client knows (3 and 5 are pending expunges).
    assert (await a("a2 FETCH 4 UID")) == "* 4 FETCH (UID 4)\r\na2 OK FETCH completed\r\n"
    assert (await a("a3 NOOP")) == "* 5 EXPUNGE\r\n* 3 EXPUNGE\r\na3 OK NOOP completed\r\n"
    assert (await a("a4 FETCH 1:* UID")) == (
        "* 1 FETCH (UID 1)\r\n* 2 FETCH (UID 2)\r\n* 3 FETCH (UID 4)\r\n* 4 FETCH (UID 6)\r\na4 OK FETCH completed\r\n"
    )
    assert (await a("a5 NOOP")) == "a5 OK NOOP completed\r\n"


async def test_uid_commands_may_send_expunge(store: MemoryStore) -> None:
    a = await selected(store)
    b = await selected(store)
    await b("y STORE 1 +FLAGS.SILENT (\\Deleted)")
    await b("z EXPUNGE")
    assert (await a("a UID FETCH 2 UID")) == "* 2 FETCH (UID 2)\r\n* 1 EXPUNGE\r\na OK FETCH completed\r\n"


async def test_qresync(store: MemoryStore) -> None:
    a = await selected(store, enable="QRESYNC")
    await a("a STORE 2 +FLAGS.SILENT (\\Deleted)")
    assert (await a("b EXPUNGE")) == "* VANISHED 2\r\nb OK [HIGHESTMODSEQ 8] EXPUNGE completed\r\n"
    # A client resynchronising from modseq 6 with what it knew.
    c = Client(store)
    await c.login()
    assert (await c("e ENABLE QRESYNC")) == "* ENABLED QRESYNC\r\ne OK ENABLE completed\r\n"
    out = await c("s SELECT INBOX (QRESYNC (1001 6 1:5))")
    assert "* VANISHED (EARLIER) 2\r\n" in out
    assert out.endswith("s OK [READ-WRITE] SELECT completed\r\n")
    out = await c("t UID FETCH 1:* FLAGS (CHANGEDSINCE 6 VANISHED)")
    assert out == "* VANISHED (EARLIER) 2\r\nt OK FETCH completed\r\n"
    out = await c("u SELECT INBOX")
    assert out.startswith("* OK [CLOSED] previous mailbox closed\r\n")
    bad = Client(store)
    await bad.login()
    assert (await bad("v SELECT INBOX (QRESYNC (1 2))")).startswith("v BAD QRESYNC must be enabled")


async def test_copy_and_move(store: MemoryStore) -> None:
    c = await selected(store)
    assert (await c("a COPY 2:3 Archive")) == "a OK [COPYUID 1006 2:3 1:2] COPY completed\r\n"
    assert (await c("b COPY 1 Nowhere")) == "b NO [TRYCREATE] no mailbox 'Nowhere'\r\n"
    assert (await c("c UID COPY 100 Archive")) == "c OK COPY completed\r\n"
    out = await c("d MOVE 1,4 Trash")
    assert out == "* OK [COPYUID 1004 1,4 1:2] moved\r\n* 4 EXPUNGE\r\n* 1 EXPUNGE\r\nd OK MOVE completed\r\n"
    assert (
        await c("e FETCH 1:* UID")
    ) == "* 1 FETCH (UID 2)\r\n* 2 FETCH (UID 3)\r\n* 3 FETCH (UID 5)\r\ne OK FETCH completed\r\n"


async def test_append(store: MemoryStore) -> None:
    c = await selected(store)
    raw = message("appended")
    out = await c.send(b"a APPEND INBOX (\\Seen) {%d}\r\n" % len(raw))
    assert out == "+ Ready for literal data\r\n"
    out = await c.send(raw + b"\r\n")
    assert out == "* 6 EXISTS\r\na OK [APPENDUID 1001 6] APPEND completed\r\n"
    out = await c.send(b'b APPEND Drafts "06-Jan-2025 11:00:00 +0100" {3+}\r\nabc\r\n')
    assert out == "b OK [APPENDUID 1003 1] APPEND completed\r\n"
    assert (await c.send(b"c APPEND Nope {3+}\r\nabc\r\n")) == "c NO [TRYCREATE] no mailbox 'Nope'\r\n"


async def test_multiappend(store: MemoryStore) -> None:
    c = await selected(store)
    assert (await c.send(b"a APPEND INBOX (\\Seen) {3}\r\n")) == "+ Ready for literal data\r\n"
    assert (await c.send(b'one "06-Jan-2025 11:00:00 +0100" {3}\r\n')) == "+ Ready for literal data\r\n"
    out = await c.send(b"two (\\Flagged) {5+}\r\nthree\r\n")
    assert out == "* 8 EXISTS\r\na OK [APPENDUID 1001 6:8] APPEND completed\r\n"
    inbox = store.accounts["jean.dupont@hopital-a.mssante.fr"].folders["INBOX"]
    assert [(m.raw, sorted(m.flags)) for m in list(inbox.messages.values())[-3:]] == [
        (b"one", ["\\Seen"]),
        (b"two", []),
        (b"three", ["\\Flagged"]),
    ]
    out = await c.send(b"b APPEND Nope {1+}\r\nx {1+}\r\ny\r\n")
    assert out == "b NO [TRYCREATE] no mailbox 'Nope'\r\n"


async def test_multiappend_refusals_keep_the_session_in_step(store: MemoryStore) -> None:
    c = Client(store, TLS, SessionConfig(append_limit=100, multiappend_limit=150))
    assert (
        await c("a APPEND INBOX {200}")
    ) == "a BAD APPEND needs authentication first (LOGIN or AUTHENTICATE)\r\n"
    out = await c.send(b"b APPEND INBOX {1+}\r\nx {1+}\r\ny\r\n")
    assert out == "b BAD APPEND needs authentication first (LOGIN or AUTHENTICATE)\r\n"
    await c.login()
    assert (await c("c APPEND INBOX {100}")) == "+ Ready for literal data\r\n"
    out = await c.send(b"x" * 100 + b" {51}\r\n")
    assert out == "c NO [TOOBIG] APPEND messages total 151 octets, over the limit of 150\r\n"
    assert (await c("d NOOP")) == "d OK NOOP completed\r\n"
    assert c.session._bad_count == 0  # a refusal is not an invalid command


async def test_search(store: MemoryStore) -> None:
    c = await selected(store)
    await c("x STORE 2,4 +FLAGS.SILENT (\\Seen)")
    assert (await c("a SEARCH SEEN")) == "* SEARCH 2 4\r\na OK SEARCH completed\r\n"
    assert (await c("b UID SEARCH UNSEEN SUBJECT message")) == "* SEARCH 1 3 5\r\nb OK SEARCH completed\r\n"
    assert (await c("c SEARCH 2:3 SEEN")) == "* SEARCH 2\r\nc OK SEARCH completed\r\n"
    assert (
        await c("d SEARCH RETURN (MIN MAX COUNT) UNSEEN")
    ) == '* ESEARCH (TAG "d") MIN 1 MAX 5 COUNT 3\r\nd OK SEARCH completed\r\n'
    assert (
        await c("e UID SEARCH RETURN () ALL")
    ) == '* ESEARCH (TAG "e") UID ALL 1:5\r\ne OK SEARCH completed\r\n'
    assert (
        await c("f SEARCH CHARSET KOI8-R FROM x")
    ) == "f NO [BADCHARSET (UTF-8 US-ASCII)] charset KOI8-R is not supported\r\n"
    assert (
        await c("g SEARCH CHARSET UTF-8 BODY bonjour")
    ) == "* SEARCH 1 2 3 4 5\r\ng OK SEARCH completed\r\n"
    assert (await c("h SEARCH MODSEQ 7")) == "* SEARCH 2 4 (MODSEQ 8)\r\nh OK SEARCH completed\r\n"
    assert (await c("i SEARCH FROM nobody")) == "* SEARCH\r\ni OK SEARCH completed\r\n"
    assert (await c("j SEARCH OR 1 * NOT UID 1")) == "* SEARCH 5\r\nj OK SEARCH completed\r\n"


async def test_idle(store: MemoryStore) -> None:
    c = await selected(store)
    assert (await c("a IDLE")) == "+ idling\r\n"
    assert c.session.idling
    store.deliver("jean.dupont@hopital-a.mssante.fr", message("during idle"))
    assert await c.session.poll_updates() == [b"* 6 EXISTS\r\n"]
    assert await c.session.poll_updates() == []
    assert (await c("DONE")) == "a OK IDLE terminated\r\n"
    assert not c.session.idling
    await c("b IDLE")
    assert (await c("c NOOP")) == "b BAD expected DONE to end IDLE\r\n"
    assert not c.session.idling
    assert (await c("d NOOP")) == "d OK NOOP completed\r\n"


async def test_utf8_accept(store: MemoryStore) -> None:
    c = Client(store)
    await c.login()
    assert (
        await c("a ENABLE UTF8=ACCEPT IMAP4rev2 FOO")
    ) == "* ENABLED UTF8=ACCEPT IMAP4rev2\r\na OK ENABLE completed\r\n"
    assert (await c('b CREATE "Envoyés"')) == "b OK CREATE completed\r\n"
    assert (
        await c('c LIST "" Envoy*')
    ) == '* LIST (\\HasNoChildren) "/" "Envoyés"\r\nc OK LIST completed\r\n'
    out = await c("d SELECT INBOX")
    assert "RECENT" not in out and "UNSEEN" not in out and '* LIST () "/" "INBOX"' in out
    assert (await c("e SEARCH SUBJECT message")) == '* ESEARCH (TAG "e") ALL 1:5\r\ne OK SEARCH completed\r\n'


# ------------------------------------------------------------------------------------ robustness

COMMANDS = [
    b"FETCH 1:* (FLAGS BODY[])", b"UID FETCH 1:* BODY.PEEK[HEADER]", b"SEARCH TEXT MARIE", b"LIST \"\" *",
    b"STATUS INBOX (MESSAGES)", b"SELECT INBOX", b"EXAMINE INBOX", b"STORE 1 +FLAGS (\\Seen)", b"EXPUNGE",
    b"COPY 1 Trash", b"MOVE 1 Archive", b"NOOP", b"IDLE", b"DONE", b"CLOSE", b"UNSELECT", b"CREATE x",
    b"APPEND INBOX {3+}\r\nabc", b"SELECT marie.curie@cabinet-b.mssante.fr/INBOX", b"GETQUOTAROOT INBOX",
]  # fmt: skip


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(st.sampled_from(COMMANDS), st.binary(max_size=40)), max_size=12))
async def test_random_sessions_never_crash_nor_leak(store: MemoryStore, commands: list[bytes]) -> None:
    c = Client(store)
    await c.login()
    out = ""
    for i, command in enumerate(commands):
        if c.session.state is State.LOGOUT:
            break
        out += await c.send(b"t%d " % i + command + b"\r\n")
    assert "MARIE" not in out.replace("SEARCH TEXT MARIE", "")
    assert "SERVERBUG" not in out


async def test_sort_and_thread(store: MemoryStore) -> None:
    address = "jean.dupont@hopital-a.mssante.fr"
    store.deliver(address, message("Re: message 2", sender="zoe@x.fr"))
    store.deliver(address, message("message 0", sender="alice@x.fr"))
    c = await selected(store)
    assert (await c("a SORT (SUBJECT) UTF-8 ALL")) == "* SORT 7 1 2 6 3 4 5\r\na OK SORT completed\r\n"
    assert (await c("b UID SORT (REVERSE FROM) UTF-8 UID 5:*")) == "* SORT 6 5 7\r\nb OK SORT completed\r\n"
    assert (await c("c SORT (ARRIVAL) KOI8-R ALL")).startswith("c NO [BADCHARSET")
    assert (
        await c("d THREAD ORDEREDSUBJECT UTF-8 ALL")
    ) == "* THREAD (1)(2 6)(3)(4)(5)(7)\r\nd OK THREAD completed\r\n"
    assert (await c("e THREAD REFERENCES UTF-8 SUBJECT nothing")) == "* THREAD\r\ne OK THREAD completed\r\n"
    assert {"SORT", "SORT=DISPLAY", "THREAD=REFERENCES", "THREAD=ORDEREDSUBJECT"} <= caps(
        await c("f CAPABILITY")
    )


async def test_qresync_without_known_uids_uses_the_change_feed(store: MemoryStore) -> None:
    other = await selected(store)
    await other("a STORE 3 +FLAGS.SILENT (\\Flagged)")  # modseq 7
    await other("b STORE 4 +FLAGS.SILENT (\\Deleted)")  # modseq 8
    await other("c EXPUNGE")  # modseq 9
    c = Client(store)
    await c.login()
    await c("e ENABLE QRESYNC")
    out = await c("s SELECT INBOX (QRESYNC (1001 6))")
    assert "* VANISHED (EARLIER) 4\r\n" in out
    assert "* 3 FETCH (UID 3 FLAGS (\\Flagged) MODSEQ (7))\r\n" in out
    assert "* OK [HIGHESTMODSEQ 9]" in out
    # A stale UIDVALIDITY means a full resynchronisation: no VANISHED.
    out = await c("t SELECT INBOX (QRESYNC (999 6 1:5))")
    assert "VANISHED" not in out and out.endswith("t OK [READ-WRITE] SELECT completed\r\n")


async def test_select_condstore_parameter_enables_modseq_in_fetch(store: MemoryStore) -> None:
    c = Client(store)
    await c.login()
    await c("s SELECT INBOX (CONDSTORE)")
    assert (await c("a FETCH 1 FLAGS")) == "* 1 FETCH (FLAGS () MODSEQ (2))\r\na OK FETCH completed\r\n"


async def test_more_refusals(store: MemoryStore) -> None:
    c = Client(store, PLAIN, SessionConfig(max_bad_commands=2))
    await c.send(b"a STARTTLS\r\n")
    c.session.tls_started(TLS)
    await c.login()
    # STARTTLS once authenticated is a state error: what follows it is still processed.
    assert (
        await c.send(b"b STARTTLS\r\nc NOOP\r\n")
    ) == "b BAD STARTTLS is not allowed once authenticated\r\nc OK NOOP completed\r\n"
    assert (await c("d CREATE /")) == "d NO [CANNOT] empty mailbox name\r\n"
    assert (await c("e RENAME Sent inbox")) == "e NO [ALREADYEXISTS] cannot rename to INBOX\r\n"
    await c("f EXAMINE INBOX")
    assert (await c("g EXPUNGE")) == "g NO [READ-ONLY] the mailbox is read-only (EXAMINE)\r\n"
    assert (await c("h MOVE 1 Trash")) == "h NO [READ-ONLY] the mailbox is read-only (EXAMINE)\r\n"
    await c("i LOGIN x y")
    out = await c("j LOGIN x y")
    assert out.endswith("* BYE too many invalid commands\r\n") and c.session.state is State.LOGOUT


async def test_many_small_fetch_responses_are_batched(store: MemoryStore) -> None:
    for i in range(3000):
        store.deliver("jean.dupont@hopital-a.mssante.fr", message(f"bulk {i}"))
    c = await selected(store)
    out = await c("a UID FETCH 1:* (UID FLAGS RFC822.SIZE)")
    assert out.count(" FETCH (") == 3005 and out.endswith("a OK FETCH completed\r\n")
    assert 2 <= len(c.chunks) < 10  # a few 64 KiB writes, not one per message


async def test_store_failures_during_idle_and_streaming(
    store: MemoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = await selected(store)
    await c("a IDLE")

    async def broken(folder_id: int, modseq: int) -> object:
        raise RuntimeError("database restarting")

    monkeypatch.setattr(c.backend, "changes_since", broken)
    assert await c.session.poll_updates() == []
    monkeypatch.undo()
    await c("DONE")

    from mssante_operator.imap import session as session_module

    def lying_stream(data: bytes, *, binary: bool = False) -> object:
        from mssante_operator.imap.response import Stream

        return Stream(len(data) + 10, iter([data]), binary)

    big = store.deliver("jean.dupont@hopital-a.mssante.fr", message("big", "y" * 100_000))
    assert "* 6 EXISTS" in await c("n NOOP")
    monkeypatch.setattr(session_module, "_stream", lying_stream)
    out = await c(f"b UID FETCH {big} BODY.PEEK[]")
    assert "b OK" not in out and "b NO" not in out
    assert isinstance(c.actions[-1], CloseConnection) and c.session.state is State.LOGOUT


async def test_search_sequence_sets_map_to_uid_ranges(store: MemoryStore) -> None:
    c = await selected(store)
    await c("a STORE 2,3 +FLAGS.SILENT (\\Deleted)")
    await c("b EXPUNGE")  # UIDs 1 4 5 left, as sequence numbers 1 2 3
    assert (await c("c UID SEARCH 2:3")) == "* SEARCH 4 5\r\nc OK SEARCH completed\r\n"
    assert (await c("d SEARCH 2:*")) == "* SEARCH 2 3\r\nd OK SEARCH completed\r\n"
    assert (await c("e UID SEARCH UID 5:*")) == "* SEARCH 5\r\ne OK SEARCH completed\r\n"
    assert (await c("f UID SEARCH UID 900:*")) == "* SEARCH 5\r\nf OK SEARCH completed\r\n"
    assert (await c("g SEARCH 7:9")) == "* SEARCH\r\ng OK SEARCH completed\r\n"
    assert (await c("h UID SEARCH NOT 1")) == "* SEARCH 4 5\r\nh OK SEARCH completed\r\n"


async def test_a_100000_message_mailbox(store: MemoryStore) -> None:
    address = "jean.dupont@hopital-a.mssante.fr"
    raw = message("bulk")
    folder = store.accounts[address].folders["Archive"]
    from imap_memory_backend import Msg

    for uid in range(1, 100_001):
        folder.messages[uid] = Msg(uid, {"\\Seen"} if uid % 2 else set(), uid + 1, raw)
    folder.uidnext, folder.modseq = 100_001, 100_001
    c = Client(store)
    await c.login()
    calls: list[str] = []
    original_fetch = c.backend.fetch

    def counting_fetch(*args: object, **kw: object) -> object:
        calls.append("fetch")
        return original_fetch(*args, **kw)  # type: ignore[arg-type]

    original_flags = c.backend.fetch_flags

    def counting_flags(*args: object, **kw: object) -> object:
        calls.append("fetch_flags")
        return original_flags(*args, **kw)  # type: ignore[arg-type]

    c.backend.fetch = counting_fetch  # type: ignore[method-assign]
    c.backend.fetch_flags = counting_flags  # type: ignore[method-assign]
    assert "* 100000 EXISTS" in await c("a SELECT Archive")
    out = await c("b UID FETCH 1:* (FLAGS)")
    # One call of the flags-only path, which streams batches without a MessageData per row.
    assert out.count("FETCH (UID") == 100_000 and calls == ["fetch_flags"]
    assert out.startswith("* 1 FETCH (UID 1 FLAGS (\\Seen))\r\n* 2 FETCH (UID 2 FLAGS ())\r\n")
    assert max(len(ch) for ch in c.chunks) < 70_000
    await c("c STORE 2:99999 +FLAGS.SILENT (\\Deleted)")
    out = await c("d EXPUNGE")
    assert out.startswith("* 99999 EXPUNGE\r\n* 99998 EXPUNGE\r\n") and out.count("EXPUNGE\r\n") == 99_998
    assert (
        await c("e FETCH 1:* UID")
    ) == "* 1 FETCH (UID 1)\r\n* 2 FETCH (UID 100000)\r\ne OK FETCH completed\r\n"


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ('"/Projets"', "empty levels"),
        ('"a//b"', "empty levels"),
        ('"a\tb"', "control characters"),
        ("{3+}\r\na\x01b", "control characters"),
        ('"x%"', "wildcards"),
        ('"' + "x" * 501 + '"', "longer than 500"),
    ],
)
async def test_invalid_new_mailbox_names(store: MemoryStore, name: str, reason: str) -> None:
    c = Client(store)
    await c.login()
    await c("e ENABLE UTF8=ACCEPT")  # without it, the mUTF-7 decoder already refuses control characters
    out = await c(f"a CREATE {name}")
    assert reason in out, out


async def test_failures_are_logged_without_secrets(store: MemoryStore) -> None:
    from structlog.testing import capture_logs

    c = Client(store)
    c.backend.fail_next = RuntimeError("password hunter2 in the message")
    with capture_logs() as logs:
        assert (await c("a LOGIN jean hunter2")) == "a NO [SERVERBUG] internal server error\r\n"
    assert len(logs) == 1
    entry = logs[0]
    assert entry["event"] == "imap_command_failed" and entry["error_type"] == "RuntimeError"
    assert "authenticate" in entry["where"] and entry["command"] == "LOGIN"
    assert "exc_info" not in entry
    assert "hunter2" not in repr(entry)


async def test_list_shows_missing_parents_as_noselect(store: MemoryStore) -> None:
    c = Client(store)
    await c.login()
    await c("a CREATE Projets/2025/Janvier")
    assert (await c('b LIST "" %')).count('"Projets"') == 1
    assert '* LIST (\\HasChildren \\Noselect) "/" "Projets"' in await c('c LIST "" %')
    assert '* LIST (\\HasChildren \\Noselect) "/" "Projets/2025"' in await c('d LIST "" Projets/%')
    assert '* LIST (\\HasNoChildren) "/" "Projets/2025/Janvier"' in await c('e LIST "" Projets/2025/%')
    assert (await c("f SELECT Projets")).startswith("f NO [NONEXISTENT]")


async def test_store_failures_in_sasl_and_idle_continuations(
    store: MemoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = Client(store)
    await c("a AUTHENTICATE PLAIN")
    c.backend.fail_next = RuntimeError("down")
    good = base64.b64encode(b"\0jean.dupont@hopital-a.mssante.fr\0secret").decode()
    assert (await c(good)) == "a NO [SERVERBUG] internal server error\r\n"
    assert (await c("b NOOP")) == "b OK NOOP completed\r\n"
    await c.login()
    await c("s SELECT INBOX")
    await c("i IDLE")

    async def broken(folder_id: int, modseq: int) -> object:
        raise RuntimeError("down")

    monkeypatch.setattr(c.backend, "changes_since", broken)
    assert (await c("DONE")) == "i NO [SERVERBUG] internal server error\r\n"
    assert not c.session.idling
    # The store failing as IDLE starts: the client already has "+ idling", so no NO now (it
    # would end an IDLE the session still holds); DONE ends it as usual.
    assert (await c("j IDLE")) == "+ idling\r\n"
    assert c.session.idling
    monkeypatch.undo()
    assert (await c("DONE")) == "j OK IDLE terminated\r\n"


async def test_repeated_authentication_failures_close_the_connection(store: MemoryStore) -> None:
    c = Client(store)
    await c("a LOGIN jean.dupont@hopital-a.mssante.fr wrong")
    await c("b LOGIN jean.dupont@hopital-a.mssante.fr wrong")
    out = await c("c LOGIN jean.dupont@hopital-a.mssante.fr wrong")
    assert (
        out
        == "c NO [AUTHENTICATIONFAILED] invalid credentials\r\n* BYE too many failed authentication attempts\r\n"
    )
    assert c.actions == [CloseConnection("too many failed authentication attempts")]


async def test_oauthbearer_failure_at_the_limit_closes_without_a_challenge(store: MemoryStore) -> None:
    c = Client(store, TLS, SessionConfig(max_auth_failures=1))
    bad = base64.b64encode(b"n,,\x01auth=Bearer nope\x01\x01").decode()
    out = await c(f"a AUTHENTICATE OAUTHBEARER {bad}")
    assert (
        out
        == "a NO [AUTHENTICATIONFAILED] invalid credentials\r\n* BYE too many failed authentication attempts\r\n"
    )
    assert isinstance(c.actions[-1], CloseConnection)
