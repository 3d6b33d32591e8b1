"""RFC 3461/1870/6152 parameter parsing and xtext."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mssante_operator.smtp.dsn import (
    Body,
    MailParams,
    Notify,
    Orcpt,
    ParamError,
    ParamOptions,
    RcptParams,
    Ret,
    XtextError,
    decode_xtext,
    encode_xtext,
    parse_mail_params,
    parse_rcpt_params,
)


def test_xtext_examples() -> None:
    assert encode_xtext("a+b=c d") == "a+2Bb+3Dc+20d"
    assert decode_xtext("a+2Bb+3Dc+20d") == "a+b=c d"
    assert encode_xtext("é") == "+C3+A9"


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ("a+2b", "hexchar"),
        ("a+2", "hexchar"),
        ("a b", "not allowed"),
        ("a=b", "not allowed"),
        ("+FF", "UTF-8"),
    ],
)
def test_xtext_errors_name_the_problem(bad: str, why: str) -> None:
    with pytest.raises(XtextError, match=why):
        decode_xtext(bad)


@given(st.text())
def test_xtext_round_trip(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates cannot travel
        return
    encoded = encode_xtext(text)
    assert all(33 <= ord(c) <= 126 and c != "=" for c in encoded)
    assert decode_xtext(encoded) == text


@given(st.text())
def test_xtext_decode_never_crashes(text: str) -> None:
    try:
        decoded = decode_xtext(text)
    except XtextError:
        return
    # What decodes re-encodes to a canonical form that decodes the same.
    assert decode_xtext(encode_xtext(decoded)) == decoded


def test_full_mail_params() -> None:
    params = parse_mail_params(
        ["SIZE=1234", "body=8bitmime", "RET=hdrs", "ENVID=QQ314159+2B1"], ParamOptions(max_size=10_000)
    )
    assert params == MailParams(size=1234, body=Body.EIGHT_BIT_MIME, ret=Ret.HDRS, envid="QQ314159+1")
    assert params.envid_xtext == "QQ314159+2B1"
    assert parse_mail_params(params.to_wire()) == params


def test_full_rcpt_params() -> None:
    params = parse_rcpt_params(["NOTIFY=success,delay", "ORCPT=rfc822;Bob+40example.org"])
    assert params.notify == frozenset({Notify.SUCCESS, Notify.DELAY})
    assert params.orcpt == Orcpt("rfc822", "Bob@example.org")
    assert params.to_wire() == ["NOTIFY=SUCCESS,DELAY", "ORCPT=rfc822;Bob@example.org"]
    never = parse_rcpt_params(["NOTIFY=NEVER"])
    assert never.notify_never and never.notify_wire() == "NEVER"


@pytest.mark.parametrize(
    ("tokens", "expected"),
    [
        (["FOO=1"], "555 5.5.4 Unsupported parameter FOO"),
        (["SIZE=abc"], "501 5.5.4 Invalid SIZE value"),
        (["SIZE"], "501 5.5.4 Parameter SIZE requires a value"),
        (["SIZE=99999"], "552 5.3.4 Message size exceeds fixed maximum message size of 1000 octets"),
        (["BODY=BINARYMIME"], "555 5.5.4 BODY=BINARYMIME is not supported"),
        (["BODY=9BIT"], "501 5.5.4 Invalid BODY value"),
        (["RET=ALL"], "501 5.5.4 Invalid RET value"),
        (["ENVID=a b"], "501 5.5.4 Invalid value for parameter ENVID"),
        (["ENVID=a+zz"], "501 5.5.4 Invalid ENVID xtext"),
        (["ENVID=" + "x" * 101], "501 5.5.4 ENVID is longer than 100"),
        (["SMTPUTF8"], "555 5.5.4 Unsupported parameter SMTPUTF8"),
        (["RET=FULL", "ret=HDRS"], "501 5.5.4 Duplicate parameter RET"),
        (["-X=1"], "501 5.5.4 Invalid parameter syntax"),
        (["X=a=b"], "501 5.5.4 Invalid value for parameter X"),
    ],
)
def test_mail_param_errors(tokens: list[str], expected: str) -> None:
    with pytest.raises(ParamError) as info:
        parse_mail_params(tokens, ParamOptions(max_size=1000))
    assert str(info.value.reply).startswith(expected)


@pytest.mark.parametrize(
    ("tokens", "expected"),
    [
        (["NOTIFY=NEVER,SUCCESS"], "501 5.5.4 Invalid NOTIFY value"),
        (["NOTIFY=SOMETIMES"], "501 5.5.4 Invalid NOTIFY value"),
        (["NOTIFY=SUCCESS,SUCCESS"], "501 5.5.4 Invalid NOTIFY value: SUCCESS is listed twice"),
        (["ORCPT=rfc822"], "501 5.5.4 Invalid ORCPT value"),
        (["ORCPT=rfc822;"], "501 5.5.4 Invalid ORCPT value"),
        (["ORCPT=rfc822;a+zz"], "501 5.5.4 Invalid ORCPT xtext"),
        (["RET=FULL"], "555 5.5.4 Unsupported parameter RET"),
    ],
)
def test_rcpt_param_errors(tokens: list[str], expected: str) -> None:
    with pytest.raises(ParamError) as info:
        parse_rcpt_params(tokens)
    assert str(info.value.reply).startswith(expected)


def test_dsn_can_be_switched_off() -> None:
    with pytest.raises(ParamError, match="Unsupported parameter NOTIFY"):
        parse_rcpt_params(["NOTIFY=NEVER"], ParamOptions(dsn=False))


envid_text = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=30)
mail_params = st.builds(
    MailParams,
    size=st.none() | st.integers(min_value=0, max_value=10**12),
    body=st.none() | st.sampled_from(list(Body)),
    ret=st.none() | st.sampled_from(list(Ret)),
    envid=st.none() | envid_text,
)
rcpt_params = st.builds(
    RcptParams,
    notify=st.none() | st.frozensets(st.sampled_from(list(Notify))),
    orcpt=st.none() | st.builds(Orcpt, addr_type=st.just("rfc822"), address=st.text(min_size=1, max_size=40)),
)


@given(mail_params)
def test_mail_params_round_trip(params: MailParams) -> None:
    assert parse_mail_params(params.to_wire()) == params


@given(rcpt_params)
def test_rcpt_params_round_trip(params: RcptParams) -> None:
    try:
        params.to_wire()
    except UnicodeEncodeError:
        return
    assert parse_rcpt_params(params.to_wire()) == params


@given(st.lists(st.text(max_size=30), max_size=6))
def test_random_params_never_crash(tokens: list[str]) -> None:
    for parse in (parse_mail_params, parse_rcpt_params):
        try:
            parse(tokens, ParamOptions(max_size=5000))
        except ParamError as exc:
            assert exc.reply.code in (501, 552, 555)
            assert exc.reply.enhanced.startswith("5.")
