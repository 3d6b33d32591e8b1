"""SASL exchanges: every mechanism's happy path, precise errors, and random input never escaping."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mssante_operator.auth.sasl import (
    MAX_LINE_CHARS,
    MAX_TOKEN_BYTES,
    Abort,
    BearerCredentials,
    Challenge,
    ExternalCredentials,
    Failed,
    Malformed,
    Mechanism,
    PasswordCredentials,
    SaslEvent,
    SaslExchange,
    UnsupportedMechanism,
)

TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def malformed(event: SaslEvent, *words: str) -> str:
    assert isinstance(event, Malformed), event
    for word in words:
        assert word in event.reason, event.reason
    return event.reason


# -- happy paths ---------------------------------------------------------------------------------


def test_unsupported_mechanism() -> None:
    with pytest.raises(UnsupportedMechanism, match="CRAM-MD5"):
        SaslExchange("CRAM-MD5")
    assert SaslExchange("plain").mechanism is Mechanism.PLAIN


def test_plain_initial_response_and_challenge() -> None:
    ex = SaslExchange("PLAIN")
    event = ex.start(b64(b"\x00jean.martin@h.test\x00correct horse battery"))
    assert event == PasswordCredentials(Mechanism.PLAIN, "jean.martin@h.test", "correct horse battery")
    assert ex.finished
    assert "correct horse" not in repr(event)
    ex = SaslExchange("PLAIN")
    assert ex.start() == Challenge(b"")
    event = ex.step(b64("admin\x00jean@h.test\x00pässwörd".encode()).encode() + b"\r\n")
    assert isinstance(event, PasswordCredentials)
    assert (event.authzid, event.username, event.password) == ("admin", "jean@h.test", "pässwörd")


def test_login() -> None:
    ex = SaslExchange("LOGIN")
    assert ex.start() == Challenge(b"Username:")
    assert ex.step(b64(b"jean@h.test")) == Challenge(b"Password:")
    assert ex.step(b64(b"secret-password")) == PasswordCredentials(
        Mechanism.LOGIN, "jean@h.test", "secret-password"
    )
    # The user name may come as an initial response.
    ex = SaslExchange("LOGIN")
    assert ex.start(b64(b"jean@h.test")) == Challenge(b"Password:")
    assert isinstance(ex.step(b64(b"pw")), PasswordCredentials)


def test_external() -> None:
    assert SaslExchange("EXTERNAL").start("=") == ExternalCredentials(None)
    ex = SaslExchange("EXTERNAL")
    assert ex.start() == Challenge(b"")
    assert ex.step("") == ExternalCredentials(None)
    assert SaslExchange("EXTERNAL").start(b64(b"dpi@h.test")) == ExternalCredentials("dpi@h.test")


def test_oauthbearer_and_error_round() -> None:
    ex = SaslExchange("OAUTHBEARER")
    message = f"n,a=jean=2Cm=3Dx@h.test,\x01host=imap.h.test\x01port=993\x01auth=Bearer {TOKEN}\x01\x01"
    event = ex.start(b64(message.encode()))
    assert event == BearerCredentials(Mechanism.OAUTHBEARER, TOKEN, "jean,m=x@h.test", "imap.h.test", 993)
    assert TOKEN not in repr(event)
    challenge = ex.reject(openid_configuration="https://idp/.well-known/openid-configuration", scope="openid")
    assert isinstance(challenge, Challenge)
    assert json.loads(challenge.data) == {
        "status": "invalid_token",
        "scope": "openid",
        "openid-configuration": "https://idp/.well-known/openid-configuration",
    }
    assert isinstance(ex.step(b64(b"\x01")), Failed)
    # Without authzid and with the minimal kvpairs.
    event = SaslExchange("OAUTHBEARER").start(b64(f"n,,\x01auth=Bearer {TOKEN}\x01\x01".encode()))
    assert event == BearerCredentials(Mechanism.OAUTHBEARER, TOKEN)


def test_xoauth2_and_error_round() -> None:
    ex = SaslExchange("XOAUTH2")
    event = ex.start(b64(f"user=jean@h.test\x01auth=Bearer {TOKEN}\x01\x01".encode()))
    assert event == BearerCredentials(Mechanism.XOAUTH2, TOKEN, "jean@h.test")
    challenge = ex.reject()
    assert isinstance(challenge, Challenge) and json.loads(challenge.data)["status"] == "401"
    assert isinstance(ex.step(""), Failed)


def test_reject_of_password_mechanism_is_failed() -> None:
    ex = SaslExchange("PLAIN")
    ex.start(b64(b"\x00u\x00p"))
    assert isinstance(ex.reject(), Failed)


def test_cancel() -> None:
    for mechanism in Mechanism:
        ex = SaslExchange(mechanism)
        assert isinstance(ex.start(), Challenge)
        assert isinstance(ex.step("*"), Abort)
        assert isinstance(ex.step("x"), Malformed)  # finished
    ex = SaslExchange("LOGIN")
    ex.start()
    ex.step(b64(b"u"))
    assert isinstance(ex.step(b"*\r\n"), Abort)


# -- precise errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("abc", ("multiple of 4",)),
        ("ab$=", ("base64 alphabet",)),
        ("é===", ("non-ASCII",)),
        (b"\xff\xfe==", ("non-ASCII",)),
        ("A" * (MAX_LINE_CHARS + 4), ("longer than",)),
    ],
)
def test_bad_base64(line: str | bytes, words: tuple[str, ...]) -> None:
    malformed(SaslExchange("PLAIN").start(line), *words)


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        (b"", ("empty",)),
        (b"user-password", ("0 NUL separator",)),
        (b"user\x00password", ("1 NUL separator",)),
        (b"a\x00b\x00c\x00d", ("3 NUL separator",)),
        (b"\x00\x00pw", ("empty user name",)),
        (b"\x00u\x00", ("empty password",)),
        (b"\x00\xff\x00pw", ("not valid UTF-8",)),
        (b"\x00u\x00" + b"p" * 2000, ("longer than 1024 bytes",)),
    ],
)
def test_plain_errors(payload: bytes, words: tuple[str, ...]) -> None:
    malformed(SaslExchange("PLAIN").start(b64(payload) if payload else "="), *words)


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        (b"", ("empty",)),
        (b"n,,auth=Bearer x\x01\x01", ("no ^A after its GS2 header",)),
        (b"x,,\x01auth=Bearer t\x01\x01", ("expected 'n' or 'y'",)),
        (b"p=tls-unique,,\x01auth=Bearer t\x01\x01", ("channel binding",)),
        (b"n,b=x,\x01auth=Bearer t\x01\x01", ("a=<authzid>",)),
        (b"n,a=x=41,\x01auth=Bearer t\x01\x01", ("=2C or =3D",)),
        (b"n,,\x01auth=Bearer t\x01", ("^A^A",)),
        (b"n,,\x01host=h\x01\x01", ("no auth=Bearer",)),
        (b"n,,\x01auth=Basic dXNlcg==\x01\x01", ("Bearer <token>",)),
        (b"n,,\x01auth=Bearer t\x01auth=Bearer u\x01\x01", ("repeats the key",)),
        (b"n,,\x01noequals\x01auth=Bearer t\x01\x01", ("not key=value",)),
        (b"n,,\x01port=99999\x01auth=Bearer t\x01\x01", ("port",)),
        (b"n,,\x01port=\xc2\xb2\x01auth=Bearer t\x01\x01", ("port",)),
        (b"n,,\x01\x01auth=Bearer t\x01\x01", ("empty key=value",)),
        (b"n,,\x01\x01", ("no auth=Bearer",)),
        (b"n,\x01auth=Bearer t\x01\x01", ("GS2 header",)),
    ],
)
def test_oauthbearer_errors(payload: bytes, words: tuple[str, ...]) -> None:
    malformed(SaslExchange("OAUTHBEARER").start(b64(payload) if payload else "="), *words)


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        (b"user=u\x01auth=Bearer t\x01", ("^A^A",)),
        (b"user=u\x01\x01", ("no auth=Bearer",)),
        (b"user=u\x01auth=Bearer \x01\x01", ("Bearer <token>",)),
    ],
)
def test_xoauth2_errors(payload: bytes, words: tuple[str, ...]) -> None:
    malformed(SaslExchange("XOAUTH2").start(b64(payload)), *words)


def test_token_too_long() -> None:
    token = "a" * (MAX_TOKEN_BYTES + 1)
    malformed(SaslExchange("XOAUTH2").start(b64(f"auth=Bearer {token}\x01\x01".encode())), "longer than")


def test_login_empty_fields() -> None:
    ex = SaslExchange("LOGIN")
    ex.start()
    malformed(ex.step(""), "user name is empty")
    ex = SaslExchange("LOGIN")
    ex.start(b64(b"u"))
    malformed(ex.step("="), "password is empty")


def test_steps_out_of_order() -> None:
    malformed(SaslExchange("PLAIN").step("AAAA"), "not started")
    ex = SaslExchange("PLAIN")
    ex.start()
    malformed(ex.start(), "already started")


# -- properties and fuzzing ----------------------------------------------------------------------

TEXT = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=60
)


@given(authzid=st.one_of(st.none(), TEXT), user=TEXT, password=TEXT)
def test_plain_round_trip(authzid: str | None, user: str, password: str) -> None:
    message = f"{authzid or ''}\x00{user}\x00{password}".encode()
    event = SaslExchange("PLAIN").start(b64(message))
    assert event == PasswordCredentials(Mechanism.PLAIN, user, password, authzid)


@given(user=TEXT, password=TEXT)
def test_login_round_trip(user: str, password: str) -> None:
    ex = SaslExchange("LOGIN")
    ex.start()
    ex.step(b64(user.encode()))
    assert ex.step(b64(password.encode())) == PasswordCredentials(Mechanism.LOGIN, user, password)


TOKEN68 = st.from_regex(r"[A-Za-z0-9\-._~+/]{1,200}=*", fullmatch=True)
NAME = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, blacklist_characters=",="), max_size=40)


@given(token=TOKEN68, authzid=NAME, host=NAME)
def test_oauthbearer_round_trip(token: str, authzid: str, host: str) -> None:
    header = f"n,a={authzid}," if authzid else "n,,"
    pairs = (f"host={host}\x01" if host else "") + f"auth=Bearer {token}\x01\x01"
    event = SaslExchange("OAUTHBEARER").start(b64(f"{header}\x01{pairs}".encode()))
    assert event == BearerCredentials(Mechanism.OAUTHBEARER, token, authzid or None, host or None)


ANY_EVENT = (Challenge, ExternalCredentials, PasswordCredentials, BearerCredentials, Abort, Malformed, Failed)


def _drive(mechanism: str, initial: bytes | str | None, lines: list[bytes | str]) -> None:
    ex = SaslExchange(mechanism)
    event = ex.start(initial)
    assert isinstance(event, ANY_EVENT)
    for line in lines:
        event = ex.step(line)
        assert isinstance(event, ANY_EVENT)
        if isinstance(event, BearerCredentials):
            event = ex.reject()
            assert isinstance(event, Challenge | Failed)


@settings(max_examples=400)
@given(
    mechanism=st.sampled_from(list(Mechanism)),
    initial=st.one_of(st.none(), st.binary(max_size=300), st.text(max_size=300)),
    lines=st.lists(st.one_of(st.binary(max_size=200), st.text(max_size=200)), max_size=4),
)
def test_random_lines_never_raise(
    mechanism: Mechanism, initial: bytes | str | None, lines: list[bytes | str]
) -> None:
    _drive(mechanism, initial, lines)


@settings(max_examples=600)
@given(
    mechanism=st.sampled_from(list(Mechanism)),
    payloads=st.lists(st.binary(max_size=400), min_size=1, max_size=4),
)
def test_random_decoded_payloads_never_raise(mechanism: Mechanism, payloads: list[bytes]) -> None:
    """Valid base64 of random bytes reaches the mechanism parsers themselves."""
    _drive(mechanism, b64(payloads[0]), [b64(p) for p in payloads[1:]])


@settings(max_examples=300)
@given(
    noise=st.lists(
        st.sampled_from(["\x01", "\x00", ",", "=", "a=", "n", "auth", "Bearer ", "user=", "x"]), max_size=20
    )
)
def test_structured_noise_for_bearer_mechanisms(noise: list[str]) -> None:
    payload = "".join(noise).encode()
    for mechanism in ("OAUTHBEARER", "XOAUTH2"):
        _drive(mechanism, b64(payload) if payload else "=", [])
