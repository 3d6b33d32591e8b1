"""The Authenticator on both store backends, with dev-PKI certificates, local-issuer tokens and argon2."""

from __future__ import annotations

import base64
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from sqlalchemy.ext.asyncio import AsyncEngine

from mssante_operator.accounts import hash_password, verify_password
from mssante_operator.auth import (
    PUBLIC_FAILURE,
    PUBLIC_RATE_LIMITED,
    PUBLIC_TEMPORARY,
    Authenticator,
    AuthMethod,
    AuthResult,
    BearerCredentials,
    BearerTokenValidator,
    ClientContext,
    Credentials,
    ExternalCredentials,
    Mechanism,
    MemoryRateLimiter,
    PasswordCredentials,
    SaslExchange,
    advertised_mechanisms,
    may_send_as,
)
from mssante_operator.auth.ratelimit import ip_key
from mssante_operator.config import load_settings
from mssante_operator.config.models import (
    AuthPolicySettings,
    AuthSettings,
    MailboxType,
    PolicySettings,
    RateLimitPolicy,
    RateLimitSettings,
)
from mssante_operator.identifiers import luhn_check_digit
from mssante_operator.pki.devpki import DevPki
from mssante_operator.pki.identity import CertificateIdentity, IdentityKind, identity_from_certificate
from mssante_operator.pki.validation import Usage
from mssante_operator.store import session_factory
from mssante_operator.store.crypto import MasterKey
from mssante_operator.store.mailstore import MailStore
from mssante_operator.store.models import MailboxStatus
from oidc_fixtures import LocalIssuer
from pki_fixtures import PERSON_ID, STRUCTURE_ID, leaf, validator

DOMAIN = "hopital.mssante.test"
JEAN = f"jean.martin@{DOMAIN}"
JEAN_CAB = f"cabinet.martin@{DOMAIN}"
JEAN_OLD = f"jean.martin.ancien@{DOMAIN}"
CARDIO = f"cardiologie@{DOMAIN}"
DPI = f"dpi@{DOMAIN}"
OTHER_ORG = f"accueil@{DOMAIN}"
CLAIRE = f"claire.durand@{DOMAIN}"
OTHER_STRUCTURE = "1690000019"
CLAIRE_ID = "8" + "1000000001" + luhn_check_digit("1000000001")
PASSWORD = "correct horse battery staple"
LENIENT = RateLimitPolicy(max_failures=1000, free_failures=1000)
PER_ONLY = PolicySettings(auth=AuthPolicySettings(password_allowed_types=[MailboxType.PER]))


@dataclass
class World:
    store: MailStore
    issuer: LocalIssuer
    person: CertificateIdentity
    organisation: CertificateIdentity
    server: CertificateIdentity
    other_person: CertificateIdentity


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _identity(pki: DevPki, crt: Path) -> CertificateIdentity:
    result = validator(pki).validate(leaf(crt), usage=Usage.TLS_CLIENT)
    assert result.ok and result.identity is not None, result.detail
    return result.identity


@pytest.fixture
async def world(engine: AsyncEngine, dev_pki: DevPki, tmp_path: Path) -> AsyncIterator[World]:
    key_file = tmp_path / "master.key"
    key_file.write_bytes(os.urandom(32))
    store = MailStore(session_factory(engine), MasterKey(key_file.read_bytes()))
    await store.add_domain(DOMAIN)
    hashed = hash_password(PASSWORD)
    await store.add_mailbox(
        JEAN, MailboxType.PER, owner_national_id=PERSON_ID, structure_id=STRUCTURE_ID, password_hash=hashed
    )
    await store.add_mailbox(JEAN_CAB, MailboxType.CAB, owner_national_id=PERSON_ID)
    await store.add_mailbox(JEAN_OLD, MailboxType.PER, owner_national_id=PERSON_ID, password_hash=hashed)
    await store.set_mailbox_status(JEAN_OLD, MailboxStatus.SUSPENDED)
    await store.add_mailbox(CARDIO, MailboxType.ORG, structure_id=STRUCTURE_ID, password_hash=hashed)
    await store.add_mailbox(DPI, MailboxType.APP, structure_id=STRUCTURE_ID)
    await store.add_mailbox(OTHER_ORG, MailboxType.ORG, structure_id=OTHER_STRUCTURE)
    await store.add_mailbox(
        CLAIRE, MailboxType.PER, owner_national_id=CLAIRE_ID, structure_id=OTHER_STRUCTURE
    )
    person_crt, _ = dev_pki.issue_person(PERSON_ID, "Jean", "Martin", tmp_path)
    org_crt, _ = dev_pki.issue_org("DPI HOPITAL", STRUCTURE_ID, tmp_path)
    other_crt, _ = dev_pki.issue_person(CLAIRE_ID, "Claire", "Durand", tmp_path)
    (tmp_path / "oidc").mkdir()
    issuer = await LocalIssuer.start(tmp_path / "oidc")
    try:
        yield World(
            store=store,
            issuer=issuer,
            person=_identity(dev_pki, person_crt),
            organisation=_identity(dev_pki, org_crt),
            server=identity_from_certificate(leaf(dev_pki.server_cert)),
            other_person=_identity(dev_pki, other_crt),
        )
    finally:
        await issuer.stop()


def _authenticator(world: World, *, policy: PolicySettings = PER_ONLY, **kwargs: object) -> Authenticator:
    settings = kwargs.pop("settings", None) or AuthSettings(oidc=world.issuer.settings())
    assert isinstance(settings, AuthSettings)
    tokens = kwargs.pop("tokens", None)
    kwargs.setdefault("limiter", MemoryRateLimiter(RateLimitSettings(account=LENIENT, ip=LENIENT)))
    if tokens is None and settings.oidc is not None:
        tokens = BearerTokenValidator(settings.oidc)
    return Authenticator(world.store, policy=policy, settings=settings, tokens=tokens, **kwargs)  # type: ignore[arg-type]


def ctx(
    identity: CertificateIdentity | None = None, *, tls: bool = True, ip: str = "192.0.2.10"
) -> ClientContext:
    return ClientContext(remote_ip=ip, tls=tls, tls_identity=identity, listener="imap")


def _refused(result: AuthResult, *words: str) -> None:
    assert not result.ok and result.identity is None and result.mailboxes == (), result
    assert not result.rate_limited
    for word in words:
        assert word in result.reason, result.reason


def _plain(user: str, password: str, authzid: str = "") -> Credentials:
    event = SaslExchange("PLAIN").start(base64.b64encode(f"{authzid}\0{user}\0{password}".encode()))
    assert isinstance(event, PasswordCredentials)
    return event


def _oauthbearer(token: str, authzid: str | None = None) -> BearerCredentials:
    header = f"n,a={authzid}," if authzid else "n,,"
    event = SaslExchange("OAUTHBEARER").start(
        base64.b64encode(f"{header}\x01host=imap\x01port=993\x01auth=Bearer {token}\x01\x01".encode())
    )
    assert isinstance(event, BearerCredentials)
    return event


def _xoauth2(token: str, user: str) -> BearerCredentials:
    event = SaslExchange("XOAUTH2").start(
        base64.b64encode(f"user={user}\x01auth=Bearer {token}\x01\x01".encode())
    )
    assert isinstance(event, BearerCredentials)
    return event


# -- EXTERNAL ------------------------------------------------------------------------------------


async def test_external_person_certificate(world: World) -> None:
    auth = _authenticator(world)
    result = await auth.authenticate(ExternalCredentials(None), client=ctx(world.person))
    assert result.ok, result.reason
    assert result.mailboxes == (JEAN_CAB, JEAN)  # not the suspended one, not the ORG/APP ones
    assert result.identity is not None
    assert (
        result.identity.method is AuthMethod.CERTIFICATE and result.identity.mechanism is Mechanism.EXTERNAL
    )
    assert result.identity.national_id == PERSON_ID and result.identity.principal == f"person:{PERSON_ID}"
    assert result.identity.certificate == world.person

    selected = await auth.authenticate(ExternalCredentials(JEAN.upper()), client=ctx(world.person))
    assert selected.ok and selected.mailboxes == (JEAN,)
    assert selected.identity is not None and selected.identity.selected_mailbox == JEAN
    own_id = await auth.authenticate(ExternalCredentials(PERSON_ID), client=ctx(world.person))
    assert own_id.ok and own_id.mailboxes == (JEAN_CAB, JEAN)

    _refused(
        await auth.authenticate(ExternalCredentials(CARDIO), client=ctx(world.person)), "not a mailbox of"
    )
    _refused(
        await auth.authenticate(ExternalCredentials(CLAIRE), client=ctx(world.person)), "not a mailbox of"
    )
    _refused(await auth.authenticate(ExternalCredentials(JEAN_OLD), client=ctx(world.person)), "suspended")
    _refused(
        await auth.authenticate(ExternalCredentials("n'importe"), client=ctx(world.person)), "not a mail"
    )


async def test_external_organisation_certificate(world: World) -> None:
    auth = _authenticator(world)
    result = await auth.authenticate(ExternalCredentials(None), client=ctx(world.organisation))
    assert result.ok, result.reason
    assert result.mailboxes == (CARDIO, DPI)  # ORG and APP of the structure, never the PER there
    assert result.identity is not None and result.identity.structure_id == STRUCTURE_ID
    assert result.identity.principal == f"structure:{STRUCTURE_ID}"
    dpi = await auth.authenticate(ExternalCredentials(DPI), client=ctx(world.organisation))
    assert dpi.ok and dpi.mailboxes == (DPI,)
    _refused(
        await auth.authenticate(ExternalCredentials(JEAN), client=ctx(world.organisation)), "not a mailbox"
    )
    _refused(await auth.authenticate(ExternalCredentials(OTHER_ORG), client=ctx(world.organisation)))
    await world.store.set_mailbox_status(CARDIO, MailboxStatus.CLOSED)
    await world.store.set_mailbox_status(DPI, MailboxStatus.SUSPENDED)
    _refused(
        await auth.authenticate(ExternalCredentials(None), client=ctx(world.organisation)),
        "no active mailbox",
        "2 suspended or closed",
    )


async def test_external_refusals(world: World) -> None:
    auth = _authenticator(world)
    for result in (
        await auth.authenticate(ExternalCredentials(None), client=ctx(None)),
        await auth.authenticate(ExternalCredentials(None), client=ctx(world.person, tls=False)),
    ):
        _refused(result, "without a verified TLS client certificate")
        assert result.public_message == PUBLIC_FAILURE
    assert world.server.kind is IdentityKind.SERVER
    _refused(
        await auth.authenticate(ExternalCredentials(None), client=ctx(world.server)), "server certificate"
    )


# -- bearer tokens -------------------------------------------------------------------------------


async def test_bearer_tokens(world: World) -> None:
    auth = _authenticator(world)
    token = world.issuer.token()
    result = await auth.authenticate(_oauthbearer(token), client=ctx())
    assert result.ok, result.reason
    assert result.mailboxes == (JEAN_CAB, JEAN)
    assert result.identity is not None and result.identity.method is AuthMethod.BEARER_TOKEN
    assert result.identity.national_id == PERSON_ID and result.identity.token_expires_at is not None

    xoauth = await auth.authenticate(_xoauth2(token, JEAN), client=ctx())
    assert xoauth.ok and xoauth.mailboxes == (JEAN,)
    assert xoauth.identity is not None and xoauth.identity.mechanism is Mechanism.XOAUTH2
    assert (await auth.authenticate(_oauthbearer(token, JEAN_CAB), client=ctx())).mailboxes == (JEAN_CAB,)

    _refused(await auth.authenticate(_xoauth2(token, CLAIRE), client=ctx()), "not a mailbox of")
    claire = await auth.authenticate(
        _oauthbearer(world.issuer.token(preferred_username=CLAIRE_ID)), client=ctx()
    )
    assert claire.ok and claire.mailboxes == (CLAIRE,)


async def test_bearer_refusals(world: World, tmp_path: Path) -> None:
    auth = _authenticator(world)
    now = int(time.time())
    expired = world.issuer.token(exp=now - 3600, iat=now - 7200, nbf=now - 7200)
    _refused(await auth.authenticate(_oauthbearer(expired), client=ctx()), "bearer token refused: expired")
    (tmp_path / "other").mkdir()
    other = await LocalIssuer.start(tmp_path / "other")
    try:
        forged = other.token(iss=world.issuer.issuer)
        _refused(await auth.authenticate(_oauthbearer(forged), client=ctx()), "bearer token refused")
        _refused(await auth.authenticate(_oauthbearer(other.token()), client=ctx()), "bearer token refused")
    finally:
        await other.stop()
    unknown_person = world.issuer.token(
        preferred_username="8" + "1000000002" + luhn_check_digit("1000000002")
    )
    _refused(await auth.authenticate(_oauthbearer(unknown_person), client=ctx()), "no active mailbox")
    _refused(
        await auth.authenticate(_oauthbearer(world.issuer.token()), client=ctx(tls=False)), "without TLS"
    )
    no_issuer = _authenticator(world, settings=AuthSettings())
    _refused(
        await no_issuer.authenticate(_oauthbearer(world.issuer.token()), client=ctx()),
        "no OpenID Connect issuer",
    )


# -- passwords -----------------------------------------------------------------------------------


async def test_password_logins(world: World) -> None:
    auth = _authenticator(world)
    result = await auth.authenticate(_plain(JEAN.upper(), PASSWORD), client=ctx())
    assert result.ok, result.reason
    assert result.mailboxes == (JEAN,)
    assert result.identity is not None and result.identity.method is AuthMethod.PASSWORD
    assert result.identity.national_id == PERSON_ID and result.identity.principal == f"mailbox:{JEAN}"
    login = SaslExchange("LOGIN")
    login.start(base64.b64encode(JEAN.encode()))
    credentials = login.step(base64.b64encode(PASSWORD.encode()))
    assert isinstance(credentials, PasswordCredentials)
    assert (await auth.authenticate(credentials, client=ctx())).ok
    assert (await auth.authenticate(_plain(JEAN, PASSWORD, authzid=JEAN), client=ctx())).ok


async def test_password_refusals_all_look_alike(world: World) -> None:
    auth = _authenticator(world)
    cases = [
        (_plain(JEAN, "wrong password here"), "wrong password"),
        (_plain(f"personne@{DOMAIN}", PASSWORD), "unknown mailbox"),
        (_plain("not an address", PASSWORD), "not a mail address"),
        (_plain(CARDIO, PASSWORD), "password_allowed_types does not include ORG"),
        (_plain(DPI, PASSWORD), "has no password"),
        (_plain(JEAN_OLD, PASSWORD), "mailbox is suspended"),
        (_plain(JEAN, PASSWORD, authzid=CARDIO), "may not act as another identity"),
    ]
    for credentials, reason in cases:
        result = await auth.authenticate(credentials, client=ctx())
        _refused(result, reason)
        assert result.public_message == PUBLIC_FAILURE
        assert PASSWORD not in result.reason and "wrong password here" not in result.reason
    cleartext = await auth.authenticate(_plain(JEAN, PASSWORD), client=ctx(tls=False))
    _refused(cleartext, "without TLS")
    # The policy is per type: allow ORG and the ORG mailbox logs in.
    both = PolicySettings(auth=AuthPolicySettings(password_allowed_types=[MailboxType.PER, MailboxType.ORG]))
    assert (await _authenticator(world, policy=both).authenticate(_plain(CARDIO, PASSWORD), client=ctx())).ok


async def test_outdated_hash_is_upgraded(world: World) -> None:
    weak = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash(PASSWORD)
    await world.store.set_password_hash(JEAN, weak)
    result = await _authenticator(world).authenticate(_plain(JEAN, PASSWORD), client=ctx())
    assert result.ok
    mailbox = await world.store.get_mailbox(JEAN)
    assert mailbox is not None and mailbox.password_hash not in (None, weak)
    assert mailbox.password_hash is not None and verify_password(mailbox.password_hash, PASSWORD)


async def test_damaged_hash_is_a_refusal(world: World) -> None:
    await world.store.set_password_hash(JEAN, "not-a-hash")
    _refused(await _authenticator(world).authenticate(_plain(JEAN, PASSWORD), client=ctx()), "damaged")


# -- rate limiting -------------------------------------------------------------------------------


async def test_brute_force_is_rate_limited(world: World) -> None:
    clock = Clock()
    policy = RateLimitPolicy(max_failures=4, free_failures=1, base_delay=2, max_delay=10, lockout_seconds=60)
    limiter = MemoryRateLimiter(
        RateLimitSettings(account=policy, ip=LENIENT),
        clock=clock,
    )
    auth = _authenticator(world, limiter=limiter)
    first = await auth.authenticate(_plain(JEAN, "guess-0000000"), client=ctx())
    assert not first.ok and first.retry_after == 0.0
    second = await auth.authenticate(_plain(JEAN, "guess-0000001"), client=ctx())
    assert not second.rate_limited and second.retry_after == 2.0
    # Within the delay even the right password is not checked.
    blocked = await auth.authenticate(_plain(JEAN, PASSWORD), client=ctx())
    assert blocked.rate_limited and not blocked.ok and blocked.public_message == PUBLIC_RATE_LIMITED
    assert 0 < blocked.retry_after <= 2.0 and "rate limited" in blocked.reason
    clock.now += 2
    third = await auth.authenticate(_plain(JEAN, "guess-0000002"), client=ctx())
    assert third.retry_after == 4.0
    clock.now += 4
    fourth = await auth.authenticate(_plain(JEAN, "guess-0000003"), client=ctx())
    assert fourth.retry_after == 60.0  # four failures: locked out
    clock.now += 30
    assert (await auth.authenticate(_plain(JEAN, PASSWORD), client=ctx())).rate_limited
    # Another account from the same address is not affected.
    other = await auth.authenticate(ExternalCredentials(None), client=ctx(world.organisation))
    assert other.ok
    clock.now += 31
    ok = await auth.authenticate(_plain(JEAN, PASSWORD), client=ctx())
    assert ok.ok, ok.reason
    # Success forgets the account's failures.
    assert (await auth.authenticate(_plain(JEAN, "guess-0000004"), client=ctx())).retry_after == 0.0


async def test_failures_from_one_address_are_limited(world: World) -> None:
    clock = Clock()
    ip_policy = RateLimitPolicy(
        max_failures=3, free_failures=0, base_delay=1, max_delay=5, lockout_seconds=30
    )
    limiter = MemoryRateLimiter(
        RateLimitSettings(account=LENIENT, ip=ip_policy),
        clock=clock,
    )
    auth = _authenticator(world, limiter=limiter)
    for n in range(3):
        await auth.authenticate(_oauthbearer(f"garbage{n}"), client=ctx(ip="198.51.100.7"))
        clock.now += 10
    blocked = await auth.authenticate(_oauthbearer(world.issuer.token()), client=ctx(ip="198.51.100.7"))
    assert blocked.rate_limited
    elsewhere = await auth.authenticate(_oauthbearer(world.issuer.token()), client=ctx(ip="198.51.100.8"))
    assert elsewhere.ok


# -- delegation and policy helpers ---------------------------------------------------------------


async def test_structure_delegation(world: World) -> None:
    settings = AuthSettings(oidc=world.issuer.settings(), delegate_structure_org_mailboxes=True)
    auth = _authenticator(world, settings=settings)
    result = await auth.authenticate(ExternalCredentials(None), client=ctx(world.person))
    assert result.ok and result.mailboxes == (JEAN_CAB, JEAN, CARDIO)  # ORG of his structure, not the APP
    assert result.identity is not None
    assert may_send_as(result.identity, result.mailboxes, CARDIO).allowed
    assert not may_send_as(result.identity, result.mailboxes, DPI).allowed
    selected = await auth.authenticate(ExternalCredentials(CARDIO), client=ctx(world.person))
    assert selected.ok and selected.mailboxes == (CARDIO,)
    # Off (the default): no ORG mailbox for the practitioner.
    plain = await _authenticator(world).authenticate(ExternalCredentials(None), client=ctx(world.person))
    assert CARDIO not in plain.mailboxes


async def test_may_send_as(world: World) -> None:
    result = await _authenticator(world).authenticate(
        ExternalCredentials(None), client=ctx(world.organisation)
    )
    identity = result.identity
    assert identity is not None
    allowed = may_send_as(identity, result.mailboxes, f"<DPI@{DOMAIN.upper()}>")
    assert allowed.allowed and allowed.code == "2.1.0"
    refused = may_send_as(identity, result.mailboxes, JEAN)
    assert not refused.allowed and refused.code == "5.7.1" and JEAN in refused.reason
    assert may_send_as(identity, result.mailboxes, "<>", null_sender_ok=True).allowed
    assert may_send_as(identity, result.mailboxes, "", null_sender_ok=False).code == "5.7.1"
    assert may_send_as(identity, result.mailboxes, "no-at-sign").code == "5.1.7"
    assert may_send_as(None, (), JEAN).code == "5.7.0"


def test_advertised_mechanisms() -> None:
    none = PolicySettings()
    oidc = AuthSettings.model_validate(
        {"oidc": {"issuer": "https://idp.example/realms/x", "audience": ["a"]}}
    )
    assert advertised_mechanisms(False, True, PER_ONLY, oidc) == []
    assert advertised_mechanisms(True, False, none, AuthSettings()) == []
    assert advertised_mechanisms(True, True, none, AuthSettings()) == ["EXTERNAL"]
    assert advertised_mechanisms(True, True, none, oidc) == ["EXTERNAL", "OAUTHBEARER", "XOAUTH2"]
    assert advertised_mechanisms(True, False, PER_ONLY, oidc) == ["OAUTHBEARER", "XOAUTH2", "PLAIN", "LOGIN"]


async def test_unknown_users_cost_a_hash(world: World) -> None:
    """An unknown user is checked against a dummy argon2 hash, so it takes as long as a known one."""
    import mssante_operator.auth.authenticator as module

    module._dummy_hash = None
    result = await _authenticator(world).authenticate(_plain(f"nobody@{DOMAIN}", PASSWORD), client=ctx())
    _refused(result, "unknown mailbox")
    assert module._dummy_hash is not None and module._dummy_hash.startswith("$argon2id$")


async def test_from_settings(world: World, project_root: Path) -> None:
    dev = load_settings(project_root / "config" / "dev.toml")
    auth = Authenticator.from_settings(dev, world.store)
    assert auth.tokens is None and auth.openid_configuration_url is None
    assert auth.policy.auth.password_allowed_types == list(MailboxType)
    assert (await auth.authenticate(_plain(CARDIO, PASSWORD), client=ctx())).ok
    prod = load_settings(project_root / "config" / "production.example.toml")
    with_oidc = Authenticator.from_settings(prod, world.store)
    assert with_oidc.openid_configuration_url == (
        "https://auth.esante.gouv.fr/auth/realms/esante-wallet/.well-known/openid-configuration"
    )
    result = await with_oidc.authenticate(_plain(JEAN, PASSWORD), client=ctx())
    _refused(result, "password_allowed_types does not include PER")


async def test_unreachable_issuer_is_a_temporary_failure(world: World) -> None:
    clock = Clock()
    strict = RateLimitPolicy(max_failures=2, free_failures=0, base_delay=5, max_delay=5)
    auth = _authenticator(
        world, limiter=MemoryRateLimiter(RateLimitSettings(account=strict, ip=strict), clock=clock)
    )
    token = world.issuer.token()
    await world.issuer.stop()
    for _ in range(3):
        result = await auth.authenticate(_oauthbearer(token), client=ctx())
        assert not result.ok and result.temporary and not result.rate_limited
        assert result.public_message == PUBLIC_TEMPORARY and "issuer_unavailable" in result.reason
    # Not the client's fault: nothing was counted against it.
    assert auth.limiter.retry_after([ip_key("192.0.2.10")]) == 0.0


async def test_find_mailboxes(world: World) -> None:
    store = world.store
    assert [m.address for m in await store.find_mailboxes(owner_national_id=PERSON_ID)] == [
        JEAN_CAB,
        JEAN_OLD,  # "." sorts before "@"
        JEAN,
    ]
    org = await store.find_mailboxes(structure_id=STRUCTURE_ID, types=[MailboxType.ORG, MailboxType.APP])
    assert [m.address for m in org] == [CARDIO, DPI]
    both = await store.find_mailboxes(owner_national_id=PERSON_ID, structure_id=STRUCTURE_ID)
    assert [m.address for m in both] == [JEAN]
    with pytest.raises(ValueError, match="owner national id or a structure id"):
        await store.find_mailboxes()
