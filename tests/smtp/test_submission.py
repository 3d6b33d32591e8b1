"""The submission listener over real TLS on 127.0.0.1, with aiosmtplib and Python's smtplib, on
both store backends: certificates (EXTERNAL), bearer tokens (OAUTHBEARER, XOAUTH2), passwords,
and every refusal the issue lists."""

from __future__ import annotations

import asyncio
import smtplib
import ssl
from pathlib import Path

import aiosmtplib
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from submission_support import (
    CARDIO,
    CLAIRE,
    DPI,
    JEAN,
    PASSWORD,
    PATIENT_DOMAIN,
    PEER_DOMAIN,
    PERSON_ID,
    SUSPENDED,
    Certs,
    FixedDirectory,
    World,
    b64,
    message,
    start_world,
    stop_world,
)

from mssante_operator.config.models import RateLimitPolicy
from mssante_operator.pki.devpki import DevPki
from oidc_fixtures import LocalIssuer

X_MSS = b"X-MSS-NIL: DPI-Test/4.2 (editeur)\r\nX-MSS-CODECDA:  11490-0^LOINC \t\r\n"


def implicit(world: World, cert: tuple[Path, Path] | None = None) -> aiosmtplib.SMTP:
    return aiosmtplib.SMTP(
        hostname="127.0.0.1",
        port=world.implicit_port,
        use_tls=True,
        tls_context=world.client_context(cert),
        timeout=20,
    )


def starttls(world: World, cert: tuple[Path, Path] | None = None) -> aiosmtplib.SMTP:
    return aiosmtplib.SMTP(
        hostname="127.0.0.1",
        port=world.starttls_port,
        start_tls=False,
        tls_context=world.client_context(cert),
        timeout=20,
    )


async def send(
    client: aiosmtplib.SMTP,
    sender: str,
    recipients: list[str],
    data: bytes,
    *,
    mail_options: list[str] | None = None,
    rcpt_options: list[str] | None = None,
) -> aiosmtplib.SMTPResponse:
    await client.mail(sender, options=mail_options or [])
    for rcpt in recipients:
        await client.rcpt(rcpt, options=rcpt_options or [])
    return await client.data(data)


# -- TLS and AUTH sequencing ---------------------------------------------------------------------


async def test_nothing_before_tls_and_auth_advertised_only_after(world: World) -> None:
    client = starttls(world)
    await client.connect()
    try:
        ehlo = await client.ehlo()
        assert "STARTTLS" in ehlo.message and "AUTH" not in ehlo.message
        mail = await client.execute_command(b"MAIL", b"FROM:<" + JEAN.encode() + b">")
        assert (mail.code, mail.message[:5]) == (530, "5.7.0")
        auth = await client.execute_command(b"AUTH", b"PLAIN", b64(f"\0{JEAN}\0{PASSWORD}").encode())
        assert (auth.code, auth.message[:6]) == (538, "5.7.11")
        await client.starttls()
        ehlo = await client.ehlo()
        auth_line = next(line for line in ehlo.message.splitlines() if line.startswith("AUTH"))
        # No client certificate: no EXTERNAL.
        assert auth_line.split()[1:] == ["OAUTHBEARER", "XOAUTH2", "PLAIN", "LOGIN"]
        mail = await client.execute_command(b"MAIL", b"FROM:<" + JEAN.encode() + b">")
        assert (mail.code, mail.message) == (530, "5.7.0 Authentication required")
    finally:
        client.close()
    assert any(e.details.get("stage") == "auth" for e in world.audit.named("message.refused"))


# -- certificates -----------------------------------------------------------------------------------


async def test_person_certificate_external_local_and_remote_with_dsn_params(world: World) -> None:
    client = implicit(world, world.certs.person)
    await client.connect()
    try:
        ehlo = await client.ehlo()
        assert "EXTERNAL" in ehlo.message and "STARTTLS" not in ehlo.message
        auth = await client.execute_command(b"AUTH", b"EXTERNAL", b"=")
        assert (auth.code, auth.message) == (235, "2.7.0 Authentication successful")
        remote = f"dr.dupont@{PEER_DOMAIN}"
        data = message(JEAN, [CLAIRE, remote], extra=X_MSS)
        await client.mail(JEAN, options=["RET=HDRS", "ENVID=dossier+2B42", "SIZE=1000"])
        await client.rcpt(CLAIRE, options=["NOTIFY=SUCCESS"])
        await client.rcpt(remote, options=["NOTIFY=SUCCESS,FAILURE", f"ORCPT=rfc822;{remote}"])
        reply = await client.data(data)
    finally:
        client.close()
    assert reply.code == 250 and reply.message.startswith("2.0.0 Ok ")
    queue_id = reply.message.split()[-1]

    [stored] = await world.inbox(CLAIRE)
    head, _, _body = stored.partition(b"\r\n\r\n")
    assert stored.startswith(b"Received: from ")
    assert b"with ESMTPSA id " + queue_id.encode() in stored
    assert f"(authenticated as person:{PERSON_ID} with EXTERNAL)".encode() in head
    assert b"TLSv1.3" in head
    # Date and Message-ID were missing: added; the client's bytes follow unchanged.
    assert head.count(b"\r\nDate: ") == 1 and head.count(b"\r\nMessage-ID: <") == 1
    assert stored.endswith(data)
    assert X_MSS in stored
    # NOTIFY=SUCCESS for the local recipient: the success report is already in the sender's INBOX.
    [report] = await world.inbox(JEAN)
    assert b"report-type=delivery-status" in report and b"Action: delivered" in report
    assert f"Final-Recipient: rfc822; {CLAIRE}".encode() in report

    [(entry, recipients)] = await world.queue()
    assert (entry.queue_id, entry.recipient_domain, entry.mail_from) == (queue_id, PEER_DOMAIN, JEAN)
    assert (entry.envid, entry.ret) == ("dossier+42", "HDRS")
    assert [(r.address, r.notify, r.orcpt) for r in recipients] == [
        (remote, "SUCCESS,FAILURE", f"rfc822;{remote}")
    ]
    assert world.wakes == [1]

    [success] = world.audit.named("auth.success")
    assert success.actor == f"person:{PERSON_ID}" and success.details["mechanism"] == "EXTERNAL"
    [accepted] = world.audit.named("message.accepted")
    assert accepted.queue_id == queue_id
    assert accepted.details["software"] == "DPI-Test/4.2 (editeur)"
    assert accepted.details["remote_recipients"] == [remote]
    assert accepted.details["added_headers"] == ["Date", "Message-ID"]
    metrics = world.metrics.render().decode()
    assert 'mssante_submitted_messages_total{software="DPI-Test/4.2 _editeur_"} 1.0' in metrics
    assert 'mssante_auth_attempts_total{mechanism="EXTERNAL",outcome="success"} 1.0' in metrics
    assert 'mssante_smtp_sessions_active{listener="submission"}' in metrics


async def test_organisation_certificate_sends_as_its_app_mailbox_with_authzid(world: World) -> None:
    client = implicit(world, world.certs.organisation)
    await client.connect()
    try:
        await client.ehlo()
        auth = await client.execute_command(b"AUTH", b"EXTERNAL", b64(DPI).encode())
        assert auth.code == 235
        # The authorization identity narrowed the session to the APP mailbox.
        refused = await client.execute_command(b"MAIL", f"FROM:<{CARDIO}>".encode())
        assert (refused.code, refused.message[:5]) == (553, "5.7.1")
        reply = await send(client, DPI, [JEAN], message(DPI, [JEAN], date=True, message_id=True))
    finally:
        client.close()
    assert reply.code == 250
    [stored] = await world.inbox(JEAN)
    assert b"Message-ID: <client-chosen@example.test>" in stored
    assert stored.count(b"Message-ID:") == 1 and stored.count(b"\r\nDate:") == 1


async def test_certificate_from_another_ca_fails_the_handshake(world: World) -> None:
    client = implicit(world, world.certs.rogue)
    with pytest.raises(
        (aiosmtplib.SMTPConnectError, aiosmtplib.SMTPServerDisconnected, ssl.SSLError, OSError)
    ):
        await client.connect()
        await client.ehlo()
    client.close()


async def test_revoked_certificate_gets_no_external(world: World) -> None:
    client = starttls(world, world.certs.revoked)
    await client.connect()
    try:
        await client.ehlo()
        await client.starttls()
        ehlo = await client.ehlo()
        assert "EXTERNAL" not in ehlo.message
        auth = await client.execute_command(b"AUTH", b"EXTERNAL", b"=")
        assert (auth.code, auth.message) == (535, "5.7.8 Authentication credentials invalid")
    finally:
        client.close()
    [tls] = world.audit.named("tls.refused")
    assert "revoked" in str(tls.details["detail"])
    [failure] = world.audit.named("auth.failure")
    assert "revoked" in failure.reason


# -- bearer tokens ------------------------------------------------------------------------------------


def oauthbearer(token: str, authzid: str = "") -> str:
    return b64(f"n,{'a=' + authzid if authzid else ''},\x01auth=Bearer {token}\x01\x01")


async def test_oauthbearer_with_initial_response_and_xoauth2(world: World, issuer: LocalIssuer) -> None:
    client = starttls(world)
    await client.connect()
    try:
        await client.starttls()
        await client.ehlo()
        auth = await client.execute_command(b"AUTH", b"OAUTHBEARER", oauthbearer(issuer.token()).encode())
        assert auth.code == 235
        reply = await send(client, JEAN, [CLAIRE], message(JEAN, [CLAIRE]))
        assert reply.code == 250
    finally:
        client.close()
    client = starttls(world)
    await client.connect()
    try:
        await client.starttls()
        await client.ehlo()
        auth = await client.auth_xoauth2(JEAN, issuer.token())
        assert auth.code == 235
        reply = await send(client, JEAN, [CLAIRE], message(JEAN, [CLAIRE]))
        assert reply.code == 250
    finally:
        client.close()
    assert len(await world.inbox(CLAIRE)) == 2
    mechanisms = [e.details["mechanism"] for e in world.audit.named("auth.success")]
    assert mechanisms == ["OAUTHBEARER", "XOAUTH2"]


async def test_oauthbearer_with_continuation_line(world: World, issuer: LocalIssuer) -> None:
    client = implicit(world)
    await client.connect()
    try:
        await client.ehlo()
        challenge = await client.execute_command(b"AUTH", b"OAUTHBEARER")
        assert challenge.code == 334
        auth = await client.execute_command(oauthbearer(issuer.token(), JEAN).encode())
        assert auth.code == 235
    finally:
        client.close()


@pytest.mark.parametrize("kind", ["expired", "other_issuer"])
async def test_refused_tokens_get_the_rfc7628_error_then_535(
    world: World, issuer: LocalIssuer, tmp_path: Path, kind: str
) -> None:
    if kind == "expired":
        now = int(issuer.claims()["iat"])
        token = issuer.token(exp=now - 3600, iat=now - 7200, nbf=now - 7200)
    else:
        other_dir = tmp_path / "other"
        other_dir.mkdir()
        other = await LocalIssuer.start(other_dir, realm="other")
        token = other.token()
        await other.stop()
    client = implicit(world)
    await client.connect()
    try:
        await client.ehlo()
        error = await client.execute_command(b"AUTH", b"OAUTHBEARER", oauthbearer(token).encode())
        assert error.code == 334  # the RFC 7628 error JSON
        final = await client.execute_command(b"AQ==")
        assert (final.code, final.message) == (535, "5.7.8 Authentication credentials invalid")
        mail = await client.execute_command(b"MAIL", f"FROM:<{JEAN}>".encode())
        assert mail.code == 530
    finally:
        client.close()
    [failure] = world.audit.named("auth.failure")
    # Another issuer's token fails on its signature (same key id, other key) or its issuer.
    expected = ("expired",) if kind == "expired" else ("wrong_issuer", "bad_signature", "unknown_key")
    assert any(word in failure.reason for word in expected), failure.reason
    assert "Bearer" not in repr(world.audit.events)


# -- passwords ---------------------------------------------------------------------------------------


async def test_password_plain_and_login_when_policy_allows(world: World) -> None:
    client = starttls(world)
    await client.connect()
    try:
        await client.starttls()
        await client.ehlo()
        auth = await client.auth_login(CARDIO, PASSWORD)  # LOGIN: two continuation lines
        assert auth.code == 235
        reply = await send(client, CARDIO, [JEAN], message(CARDIO, [JEAN]))
        assert reply.code == 250
    finally:
        client.close()
    client = implicit(world)
    await client.connect()
    try:
        await client.ehlo()
        wrong = await client.execute_command(b"AUTH", b"PLAIN", b64(f"\0{JEAN}\0wrong").encode())
        unknown = await client.execute_command(
            b"AUTH", b"PLAIN", b64(f"\0nobody@x.test\0{PASSWORD}").encode()
        )
        # Never says which part was wrong.
        assert (
            (wrong.code, wrong.message)
            == (unknown.code, unknown.message)
            == (
                535,
                "5.7.8 Authentication credentials invalid",
            )
        )
    finally:
        client.close()


async def test_password_refused_for_a_type_the_policy_excludes(
    engine: AsyncEngine, sub_pki: DevPki, certs: Certs, tmp_path: Path
) -> None:
    world = await start_world(engine, sub_pki, certs, tmp_path, password_types=())
    try:
        client = implicit(world)
        await client.connect()
        try:
            ehlo = await client.ehlo()
            # No issuer, no passwords, no certificate: nothing to offer.
            assert "AUTH" not in ehlo.message
            auth = await client.execute_command(b"AUTH", b"PLAIN", b64(f"\0{JEAN}\0{PASSWORD}").encode())
            assert auth.code == 504
        finally:
            client.close()
    finally:
        await stop_world(world)


async def test_python_smtplib_over_implicit_tls(world: World) -> None:
    context = world.client_context()

    def run() -> dict[str, tuple[int, bytes]]:
        with smtplib.SMTP_SSL("127.0.0.1", world.implicit_port, context=context, timeout=20) as smtp:
            smtp.login(JEAN, PASSWORD)
            return smtp.sendmail(JEAN, [CLAIRE], message(JEAN, [CLAIRE]))

    refused = await asyncio.to_thread(run)
    assert refused == {}
    assert len(await world.inbox(CLAIRE)) == 1


# -- what an authenticated client may send --------------------------------------------------------


async def test_sending_as_someone_else_is_refused(world: World) -> None:
    client = implicit(world, world.certs.person)
    await client.connect()
    try:
        await client.ehlo()
        await client.execute_command(b"AUTH", b"EXTERNAL", b"=")
        mail = await client.execute_command(b"MAIL", f"FROM:<{CLAIRE}>".encode())
        assert mail.code == 553 and mail.message.startswith("5.7.1 ")
        assert CLAIRE in mail.message
        # MAIL FROM is his own, the From: header is not.
        await client.mail(JEAN)
        await client.rcpt(CARDIO)
        with pytest.raises(aiosmtplib.SMTPDataError) as refused:
            await client.data(message(CLAIRE, [CARDIO]))
        assert refused.value.code == 553 and refused.value.message.startswith("5.7.1 From: header")
        # The null sender (an MDN) is fine, with his own From:.
        mdn = message(
            JEAN, [CARDIO], extra=b"Content-Type: multipart/report; report-type=disposition-notification\r\n"
        )
        reply = await send(client, "", [CARDIO], mdn)
        assert reply.code == 250
    finally:
        client.close()
    assert len(await world.inbox(CARDIO)) == 1
    reasons = [e.reason for e in world.audit.named("message.refused")]
    assert reasons == ["not_own_sender", "not_own_from"]


async def test_recipients_outside_the_trust_space_and_local_states(world: World) -> None:
    client = implicit(world, world.certs.person)
    await client.connect()
    try:
        await client.ehlo()
        await client.execute_command(b"AUTH", b"EXTERNAL", b"=")
        await client.mail(JEAN)
        outside = await client.execute_command(b"RCPT", b"TO:<someone@gmail.example>")
        assert outside.code == 550 and outside.message.startswith("5.7.1 ")
        assert "gmail.example" in outside.message and "trust list" in outside.message
        unknown = await client.execute_command(b"RCPT", f"TO:<nobody@{JEAN.rpartition('@')[2]}>".encode())
        assert (unknown.code, unknown.message[:5]) == (550, "5.1.1")
        suspended = await client.execute_command(b"RCPT", f"TO:<{SUSPENDED}>".encode())
        assert (suspended.code, suspended.message[:5]) == (450, "4.2.1")
        patient = f"1840575123456789@{PATIENT_DOMAIN}"
        ok = await client.execute_command(b"RCPT", f"TO:<{patient}>".encode())
        assert ok.code == 250
        reply = await client.data(message(JEAN, [patient]))
        assert reply.code == 250
    finally:
        client.close()
    [(entry, _)] = await world.queue()
    assert entry.recipient_domain == PATIENT_DOMAIN


@pytest.mark.parametrize("policy", ["accept", "refuse"])
async def test_recipient_missing_from_the_directory_mirror(
    engine: AsyncEngine, sub_pki: DevPki, certs: Certs, tmp_path: Path, policy: str
) -> None:
    listed = f"dr.dupont@{PEER_DOMAIN}"
    world = await start_world(
        engine,
        sub_pki,
        certs,
        tmp_path,
        directory=FixedDirectory({listed}),
        unlisted_recipient=policy,
    )
    try:
        client = implicit(world, world.certs.person)
        await client.connect()
        try:
            await client.ehlo()
            await client.execute_command(b"AUTH", b"EXTERNAL", b"=")
            await client.mail(JEAN)
            assert (await client.rcpt(listed))[0] == 250
            unlisted = f"inconnu@{PEER_DOMAIN}"
            answer = await client.execute_command(b"RCPT", f"TO:<{unlisted}>".encode())
            if policy == "refuse":
                assert (answer.code, answer.message[:5]) == (550, "5.1.1")
            else:
                assert answer.code == 250
            assert (await client.data(message(JEAN, [listed])))[0] == 250
        finally:
            client.close()
        [accepted] = world.audit.named("message.accepted")
        if policy == "accept":
            assert accepted.details["not_in_directory"] == [unlisted]
        else:
            assert "not_in_directory" not in accepted.details
    finally:
        await stop_world(world)


async def test_brute_force_is_rate_limited_then_even_the_right_password_waits(
    engine: AsyncEngine, sub_pki: DevPki, certs: Certs, tmp_path: Path
) -> None:
    limits = RateLimitPolicy(
        max_failures=4,
        free_failures=1,
        base_delay=0.05,
        max_delay=0.1,
        window_seconds=600,
        lockout_seconds=600,
    )
    world = await start_world(engine, sub_pki, certs, tmp_path, account_limits=limits, max_auth_failures=10)
    try:
        client = implicit(world)
        await client.connect()
        try:
            await client.ehlo()
            codes = []
            for attempt in range(6):
                answer = await client.execute_command(
                    b"AUTH", b"PLAIN", b64(f"\0{JEAN}\0guess-{attempt}").encode()
                )
                codes.append((answer.code, answer.message[:5]))
            assert codes[:4] == [(535, "5.7.8")] * 4
            assert codes[4:] == [(454, "4.7.0")] * 2
            right = await client.execute_command(b"AUTH", b"PLAIN", b64(f"\0{JEAN}\0{PASSWORD}").encode())
            assert (right.code, right.message[:5]) == (454, "4.7.0")
            assert "try again later" in right.message
        finally:
            client.close()
    finally:
        await stop_world(world)
    failures = world.audit.named("auth.failure")
    assert len(failures) == 7 and failures[-1].details.get("rate_limited") is True
    assert {f.details["claimed"] for f in failures} == {JEAN}
    assert all(PASSWORD not in repr(e) and "guess-" not in repr(e) for e in world.audit.events)


async def test_session_closed_after_too_many_failed_auth(world: World) -> None:
    client = implicit(world)
    await client.connect()
    try:
        await client.ehlo()
        for _ in range(2):
            answer = await client.execute_command(b"AUTH", b"PLAIN", b64(f"\0{JEAN}\0bad").encode())
            assert answer.code == 535
        with pytest.raises(aiosmtplib.SMTPServerDisconnected):
            await client.execute_command(b"AUTH", b"PLAIN", b64(f"\0{JEAN}\0bad").encode())
            await client.noop()
    finally:
        client.close()


async def test_reload_rebinds_implicit_tls_and_keeps_serving(world: World) -> None:
    port = world.implicit_port
    await world.service.reload(world.settings)
    assert world.implicit_port == port
    client = implicit(world, world.certs.person)
    await client.connect()
    try:
        await client.ehlo()
        assert (await client.execute_command(b"AUTH", b"EXTERNAL", b"=")).code == 235
    finally:
        client.close()


async def test_malformed_and_cancelled_auth_exchanges(world: World) -> None:
    client = implicit(world)
    await client.connect()
    try:
        await client.ehlo()
        bad = await client.execute_command(b"AUTH", b"PLAIN", b"not*base64")
        assert (bad.code, bad.message[:5]) == (501, "5.5.2") and "base64" in bad.message
        username = await client.execute_command(b"AUTH", b"LOGIN")
        assert (username.code, username.message) == (334, "VXNlcm5hbWU6")  # "Username:", as sent
        cancelled = await client.execute_command(b"*")
        assert (cancelled.code, cancelled.message) == (501, "5.7.0 Authentication cancelled")
        unknown = await client.execute_command(b"AUTH", b"CRAM-MD5")
        assert (unknown.code, unknown.message[:5]) == (504, "5.5.4")
    finally:
        client.close()
    client = implicit(world)
    await client.connect()
    try:
        await client.ehlo()
        empty = await client.execute_command(b"AUTH", b"OAUTHBEARER")  # then a line far too long
        assert (empty.code, empty.message) == (334, "")
        too_long = await client.execute_command(b"A" * 40000)
        assert (too_long.code, too_long.message[:5]) == (500, "5.5.6")
        assert (await client.noop()).code == 250
        # The session is still usable and the null AUTH= parameter of RFC 4954 is accepted.
        auth = await client.execute_command(b"AUTH", b"PLAIN", b64(f"\0{JEAN}\0{PASSWORD}").encode())
        assert auth.code == 235
        assert (await client.execute_command(b"MAIL", f"FROM:<{JEAN}> AUTH=<>".encode())).code == 250
    finally:
        client.close()
