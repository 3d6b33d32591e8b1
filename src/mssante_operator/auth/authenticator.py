"""Who a client is and which mailboxes it may act as, for submission and IMAP alike.

- EXTERNAL: the TLS client certificate, already validated by the wire layer with
  `pki.CertificateValidator` (usage TLS_CLIENT). A personal certificate (PERSON) acts as the
  mailboxes whose owner is its national id; an organisation certificate (ORGANISATION) as the ORG and
  APP mailboxes of its structure id. Server certificates never log in as clients.
- OAUTHBEARER / XOAUTH2: a JWT of the configured OpenID Connect issuer (Pro Santé Connect); its
  national id claim selects the mailboxes that person owns.
- PLAIN / LOGIN: a mailbox address and its password, only over TLS and only for the mailbox types
  listed in `policy.auth.password_allowed_types`.

An authorization identity (SASL authzid, XOAUTH2 `user=`) naming one of the identity's mailboxes
narrows the session to it; naming anything else is a refusal. Suspended and closed mailboxes are
never granted. With `auth.delegate_structure_org_mailboxes`, a practitioner also acts as the ORG
mailboxes of the structures his own PER mailboxes belong to (the hospital's shared service boxes).

Failures are rate-limited per client address and per account (`auth.ratelimit`), logged with an
internal reason, and answered with one public message that never says what was wrong.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Literal, Protocol

from mssante_operator.accounts import (
    PasswordError,
    PasswordHashError,
    hash_password,
    needs_rehash,
    password_allowed,
    verify_password,
)
from mssante_operator.addresses import InvalidAddress, normalize_address
from mssante_operator.auth.ratelimit import MemoryRateLimiter, RateKey, RateLimiter, account_key, ip_key
from mssante_operator.auth.sasl import (
    BearerCredentials,
    Credentials,
    ExternalCredentials,
    Mechanism,
    PasswordCredentials,
)
from mssante_operator.auth.tokens import BearerTokenValidator, TokenError, TokenIdentity, TokenRefusal
from mssante_operator.config.models import AuthSettings, MailboxType, PolicySettings
from mssante_operator.config.settings import Settings
from mssante_operator.ops.logging import get_logger
from mssante_operator.pki.identity import CertificateIdentity, IdentityKind
from mssante_operator.store.models import Mailbox, MailboxStatus

__all__ = [
    "PUBLIC_FAILURE",
    "PUBLIC_RATE_LIMITED",
    "PUBLIC_TEMPORARY",
    "AuthIdentity",
    "AuthMethod",
    "AuthResult",
    "Authenticator",
    "ClientContext",
    "Decision",
    "MailboxDirectory",
    "advertised_mechanisms",
    "may_send_as",
]

log = get_logger(__name__)

PUBLIC_FAILURE = "Authentication credentials invalid"
PUBLIC_RATE_LIMITED = "Too many failed authentication attempts, try again later"
PUBLIC_NEEDS_TLS = "Authentication requires TLS"
PUBLIC_TEMPORARY = "Temporary authentication failure, try again later"

Listener = Literal["submission", "imap"]


class MailboxDirectory(Protocol):
    """The part of `store.MailStore` the Authenticator uses."""

    async def get_mailbox(self, address: str) -> Mailbox | None: ...

    async def find_mailboxes(
        self,
        *,
        owner_national_id: str | None = None,
        structure_id: str | None = None,
        types: Sequence[MailboxType] | None = None,
    ) -> list[Mailbox]: ...

    async def set_password_hash(self, address: str, password_hash: str | None) -> None: ...


@dataclass(frozen=True)
class ClientContext:
    """What the wire layer knows about the connection."""

    remote_ip: str
    tls: bool
    #: The identity of a client certificate that `CertificateValidator` accepted (None otherwise).
    tls_identity: CertificateIdentity | None = None
    listener: Listener = "submission"


class AuthMethod(StrEnum):
    CERTIFICATE = "certificate"
    BEARER_TOKEN = "bearer_token"  # noqa: S105 (a method name, not a secret)
    PASSWORD = "password"  # noqa: S105


@dataclass(frozen=True)
class AuthIdentity:
    """An authenticated client. `principal` is stable and loggable ("person:8...", "structure:1...",
    "mailbox:addr")."""

    method: AuthMethod
    mechanism: Mechanism
    principal: str
    national_id: str | None = None
    structure_id: str | None = None
    #: The mailbox the authorization identity selected, if any.
    selected_mailbox: str | None = None
    certificate: CertificateIdentity | None = None
    token_expires_at: datetime | None = None
    token_id: str | None = None

    def describe(self) -> str:
        if self.certificate is not None:
            return self.certificate.describe()
        if self.method is AuthMethod.BEARER_TOKEN:
            return f"bearer token of national id {self.national_id}"
        return f"password login {self.principal.removeprefix('mailbox:')}"


@dataclass(frozen=True)
class AuthResult:
    """The verdict. `reason` is internal (logs, audit); send only `public_message` to the client.

    `retry_after`: seconds the client must wait before its next attempt counts (after a failure,
    the wire layer may delay its reply by it). `temporary`: the credentials could not be checked
    (`rate_limited`, or the token issuer unreachable): SMTP 454 4.7.0, IMAP NO [UNAVAILABLE],
    rather than a refusal (SMTP 535 5.7.8, IMAP NO [AUTHENTICATIONFAILED]). Store errors are not
    caught here: the wire layer answers them as temporary failures too.
    """

    ok: bool
    identity: AuthIdentity | None
    mailboxes: tuple[str, ...]
    reason: str
    public_message: str
    retry_after: float = 0.0
    rate_limited: bool = False
    temporary: bool = False


@dataclass(frozen=True)
class Decision:
    """A policy verdict with the enhanced status code to reply with."""

    allowed: bool
    code: str
    reason: str


@dataclass
class _Outcome:
    ok: bool
    reason: str
    identity: AuthIdentity | None = None
    mailboxes: tuple[str, ...] = ()
    account: str | None = None
    public_message: str = PUBLIC_FAILURE
    temporary: bool = False
    rehash: tuple[str, str] | None = field(default=None, repr=False)


class _Refused(Exception):
    def __init__(self, reason: str, account: str | None = None, *, temporary: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.account = account
        self.temporary = temporary


_dummy_hash: str | None = None


def _get_dummy_hash() -> str:
    # Unknown users are checked against this hash so they cost as much as known ones.
    global _dummy_hash
    if _dummy_hash is None:
        _dummy_hash = hash_password(secrets.token_urlsafe(24))
    return _dummy_hash


def _verify(stored: str | None, password: str) -> bool:
    return verify_password(stored or _get_dummy_hash(), password)


class Authenticator:
    """Checks credentials from a SASL exchange; one per process, shared by all listeners."""

    def __init__(
        self,
        directory: MailboxDirectory,
        *,
        policy: PolicySettings,
        settings: AuthSettings | None = None,
        tokens: BearerTokenValidator | None = None,
        limiter: RateLimiter | None = None,
        max_concurrent_hashes: int | None = None,
    ) -> None:
        self.settings = settings if settings is not None else AuthSettings()
        self.policy = policy
        self._directory = directory
        if tokens is None and self.settings.oidc is not None:
            tokens = BearerTokenValidator(self.settings.oidc)
        self.tokens = tokens
        self.limiter: RateLimiter = (
            limiter if limiter is not None else MemoryRateLimiter(self.settings.ratelimit)
        )
        # argon2 takes 64 MiB and tens of ms per check: bound how many run at once.
        self._hash_slots = asyncio.Semaphore(max_concurrent_hashes or max(2, os.cpu_count() or 2))

    @classmethod
    def from_settings(cls, settings: Settings, directory: MailboxDirectory) -> Authenticator:
        """The process's Authenticator: `[auth]` and `[policy.auth]` of the configuration."""
        return cls(directory, policy=settings.policy, settings=settings.auth)

    @property
    def openid_configuration_url(self) -> str | None:
        """For `SaslExchange.reject(openid_configuration=...)` after a refused bearer token."""
        return self.tokens.openid_configuration_url if self.tokens is not None else None

    # -- entry point -------------------------------------------------------------------------

    async def authenticate(self, credentials: Credentials, *, client: ClientContext) -> AuthResult:
        ip = ip_key(client.remote_ip)
        claimed = self._claimed_account(credentials, client)
        keys: list[RateKey] = [ip] + ([account_key(claimed)] if claimed else [])
        wait = self.limiter.retry_after(keys)
        if wait > 0:
            reason = f"rate limited ({wait:.1f}s to wait) before checking {credentials.mechanism.value}"
            self._log(False, credentials, client, reason, principal=claimed)
            return AuthResult(
                False,
                None,
                (),
                reason,
                PUBLIC_RATE_LIMITED,
                retry_after=wait,
                rate_limited=True,
                temporary=True,
            )
        try:
            outcome = await self._check(credentials, client)
        except _Refused as refusal:
            outcome = _Outcome(
                False,
                refusal.reason,
                account=refusal.account or claimed,
                public_message=PUBLIC_TEMPORARY if refusal.temporary else PUBLIC_FAILURE,
                temporary=refusal.temporary,
            )
        if outcome.ok and outcome.identity is not None:
            self.limiter.record_success([account_key(outcome.account)] if outcome.account else [])
            if outcome.rehash is not None:
                await self._rehash(*outcome.rehash)
            self._log(True, credentials, client, outcome.reason, principal=outcome.identity.principal)
            return AuthResult(
                True, outcome.identity, outcome.mailboxes, outcome.reason, "Authentication successful"
            )
        if outcome.temporary:
            # Not the client's fault: not counted as a failure.
            self._log(False, credentials, client, outcome.reason, principal=outcome.account)
            return AuthResult(False, None, (), outcome.reason, outcome.public_message, temporary=True)
        failed_keys = [ip] + ([account_key(outcome.account)] if outcome.account else [])
        wait = self.limiter.record_failure(failed_keys)
        self._log(False, credentials, client, outcome.reason, principal=outcome.account)
        return AuthResult(False, None, (), outcome.reason, outcome.public_message, retry_after=wait)

    @staticmethod
    def _claimed_account(credentials: Credentials, client: ClientContext) -> str | None:
        if isinstance(credentials, PasswordCredentials):
            try:
                return normalize_address(credentials.username)
            except InvalidAddress:
                return credentials.username
        if isinstance(credentials, ExternalCredentials) and client.tls_identity is not None:
            return _certificate_account(client.tls_identity)
        return None  # a token's account is only known once it is verified

    def _log(
        self, ok: bool, credentials: Credentials, client: ClientContext, reason: str, *, principal: str | None
    ) -> None:
        fields = {
            "mechanism": credentials.mechanism.value,
            "listener": client.listener,
            "remote_ip": client.remote_ip,
            "principal": principal,
            "reason": reason,
        }
        if ok:
            log.info("authentication succeeded", **fields)
        else:
            log.warning("authentication failed", **fields)

    async def _check(self, credentials: Credentials, client: ClientContext) -> _Outcome:
        if isinstance(credentials, ExternalCredentials):
            return await self._external(credentials, client)
        if isinstance(credentials, BearerCredentials):
            return await self._bearer(credentials, client)
        return await self._password(credentials, client)

    # -- certificates ------------------------------------------------------------------------

    async def _external(self, credentials: ExternalCredentials, client: ClientContext) -> _Outcome:
        identity = client.tls_identity
        if not client.tls or identity is None:
            raise _Refused("EXTERNAL without a verified TLS client certificate")
        account = _certificate_account(identity)
        if identity.kind is IdentityKind.PERSON:
            if identity.national_id is None:
                raise _Refused(f"{identity.describe()} carries no national id", account)
            candidates = await self._person_mailboxes(identity.national_id)
            own_ids = {identity.national_id}
            who = f"national id {identity.national_id}"
        elif identity.kind is IdentityKind.ORGANISATION:
            if identity.structure_id is None:
                raise _Refused(f"{identity.describe()} carries no structure id", account)
            candidates = await self._directory.find_mailboxes(
                structure_id=identity.structure_id, types=[MailboxType.ORG, MailboxType.APP]
            )
            own_ids = {identity.structure_id}
            who = f"structure {identity.structure_id}"
        else:
            raise _Refused(f"{identity.describe()} is a server certificate, not a client identity", account)
        mailboxes, selected = _select(candidates, credentials.authzid, own_ids, who, account)
        auth_identity = AuthIdentity(
            method=AuthMethod.CERTIFICATE,
            mechanism=Mechanism.EXTERNAL,
            principal=account,
            national_id=identity.national_id,
            structure_id=identity.structure_id,
            selected_mailbox=selected,
            certificate=identity,
        )
        return _Outcome(
            True, f"{identity.describe()} acts as {', '.join(mailboxes)}", auth_identity, mailboxes, account
        )

    async def _person_mailboxes(self, national_id: str) -> list[Mailbox]:
        owned = await self._directory.find_mailboxes(owner_national_id=national_id)
        if not self.settings.delegate_structure_org_mailboxes:
            return owned
        structures = sorted(
            {
                m.structure_id
                for m in owned
                if m.structure_id and m.type is MailboxType.PER and m.status is MailboxStatus.ACTIVE
            }
        )
        delegated: list[Mailbox] = []
        for structure in structures:
            delegated += await self._directory.find_mailboxes(structure_id=structure, types=[MailboxType.ORG])
        seen = {m.address for m in owned}
        return owned + [m for m in delegated if m.address not in seen]

    # -- bearer tokens -----------------------------------------------------------------------

    async def _bearer(self, credentials: BearerCredentials, client: ClientContext) -> _Outcome:
        if self.tokens is None:
            raise _Refused(f"{credentials.mechanism.value} refused: no OpenID Connect issuer is configured")
        if not client.tls:
            raise _Refused(f"{credentials.mechanism.value} over a connection without TLS")
        try:
            token: TokenIdentity = await self.tokens.validate(credentials.token)
        except TokenError as exc:
            raise _Refused(
                f"bearer token refused: {exc.reason.value}: {exc.detail}",
                temporary=exc.reason is TokenRefusal.ISSUER_UNAVAILABLE,
            ) from None
        account = f"person:{token.national_id}"
        candidates = await self._person_mailboxes(token.national_id)
        mailboxes, selected = _select(
            candidates, credentials.authzid, {token.national_id}, f"national id {token.national_id}", account
        )
        identity = AuthIdentity(
            method=AuthMethod.BEARER_TOKEN,
            mechanism=credentials.mechanism,
            principal=account,
            national_id=token.national_id,
            selected_mailbox=selected,
            token_expires_at=token.expires_at,
            token_id=token.token_id,
        )
        return _Outcome(
            True,
            f"bearer token of national id {token.national_id} acts as {', '.join(mailboxes)}",
            identity,
            mailboxes,
            account,
        )

    # -- passwords ---------------------------------------------------------------------------

    async def _password(self, credentials: PasswordCredentials, client: ClientContext) -> _Outcome:
        mechanism = credentials.mechanism.value
        try:
            address: str | None = normalize_address(credentials.username)
        except InvalidAddress:
            address = None
        account = address or credentials.username
        if not client.tls:
            return _Outcome(
                False,
                f"{mechanism} over a connection without TLS",
                account=account,
                public_message=PUBLIC_NEEDS_TLS,
            )
        if credentials.authzid is not None and (address is None or _norm(credentials.authzid) != address):
            raise _Refused(
                f"{mechanism} login may not act as another identity ({credentials.authzid[:100]!r})", account
            )
        mailbox = await self._directory.get_mailbox(address) if address is not None else None
        stored = mailbox.password_hash if mailbox is not None else None
        damaged = False
        async with self._hash_slots:
            try:
                match = await asyncio.to_thread(_verify, stored, credentials.password)
            except PasswordHashError:
                match, damaged = False, True
        if address is None:
            raise _Refused(f"{mechanism} user name is not a mail address", account)
        if mailbox is None:
            raise _Refused(f"{mechanism} for unknown mailbox {address}", account)
        if stored is None:
            raise _Refused(f"{mechanism} for {address}, which has no password", account)
        if damaged:
            log.error("stored password hash is damaged", mailbox=address)
            raise _Refused(f"{mechanism} for {address}: its stored password hash is damaged", account)
        allowed = password_allowed(mailbox.type, list(self.policy.auth.password_allowed_types))
        if not allowed.allowed:
            raise _Refused(f"{mechanism} for {address}: {allowed.reason}", account)
        if not match:
            raise _Refused(f"{mechanism} for {address}: wrong password", account)
        if mailbox.status is not MailboxStatus.ACTIVE:
            raise _Refused(f"{mechanism} for {address}: mailbox is {mailbox.status.value}", account)
        identity = AuthIdentity(
            method=AuthMethod.PASSWORD,
            mechanism=credentials.mechanism,
            principal=f"mailbox:{address}",
            national_id=mailbox.owner_national_id,
            structure_id=mailbox.structure_id,
            selected_mailbox=address,
        )
        rehash = None
        try:
            if needs_rehash(stored):
                rehash = (address, credentials.password)
        except PasswordHashError:
            pass
        return _Outcome(
            True, f"{mechanism} password of {address}", identity, (address,), account, rehash=rehash
        )

    async def _rehash(self, address: str, password: str) -> None:
        try:
            async with self._hash_slots:
                new_hash = await asyncio.to_thread(hash_password, password)
            await self._directory.set_password_hash(address, new_hash)
        except PasswordError:
            return  # a password the current rules refuse keeps its old hash until it is changed
        except Exception as exc:  # a failed upgrade must not fail a good login
            log.warning("password hash upgrade failed", mailbox=address, error=type(exc).__name__)
            return
        log.info("password hash upgraded", mailbox=address)


def _certificate_account(identity: CertificateIdentity) -> str:
    if identity.kind is IdentityKind.PERSON and identity.national_id:
        return f"person:{identity.national_id}"
    if identity.kind is IdentityKind.ORGANISATION and identity.structure_id:
        return f"structure:{identity.structure_id}"
    return f"certificate:{identity.fingerprint_sha256}"


def _norm(address: str) -> str | None:
    try:
        return normalize_address(address)
    except InvalidAddress:
        return None


def _select(
    candidates: Sequence[Mailbox], authzid: str | None, own_ids: set[str], who: str, account: str
) -> tuple[tuple[str, ...], str | None]:
    """The mailboxes granted and the one an authorization identity selected (or None)."""
    if authzid is not None and authzid.strip() and authzid.strip().upper() not in own_ids:
        wanted = _norm(authzid)
        if wanted is None:
            raise _Refused(f"authorization identity {authzid[:100]!r} is not a mail address", account)
        mailbox = next((m for m in candidates if m.address == wanted), None)
        if mailbox is None:
            raise _Refused(f"authorization identity {wanted} is not a mailbox of {who}", account)
        if mailbox.status is not MailboxStatus.ACTIVE:
            raise _Refused(f"mailbox {wanted} is {mailbox.status.value}", account)
        return (wanted,), wanted
    active = tuple(m.address for m in candidates if m.status is MailboxStatus.ACTIVE)
    if not active:
        detail = f" ({len(candidates)} suspended or closed)" if candidates else ""
        raise _Refused(f"no active mailbox belongs to {who}{detail}", account)
    return active, None


# -- pure policy helpers ---------------------------------------------------------------------


def may_send_as(
    identity: AuthIdentity | None, mailboxes: Sequence[str], address: str, *, null_sender_ok: bool = False
) -> Decision:
    """May this authenticated client use `address` as MAIL FROM / `From:`?

    Allowed: the mailboxes granted at authentication (own mailboxes; ORG mailboxes delegated by
    `auth.delegate_structure_org_mailboxes`; the ORG/APP mailboxes of an organisation certificate).
    `null_sender_ok` admits the null reverse-path `<>` (MAIL FROM of DSNs and MDNs, RFC 8098).
    """
    if identity is None:
        return Decision(False, "5.7.0", "authentication required")
    text = address.strip()
    if text in ("", "<>"):
        if null_sender_ok:
            return Decision(True, "2.1.0", "null reverse-path (a DSN or an MDN)")
        return Decision(False, "5.7.1", "an empty sender address is not allowed here")
    try:
        normalised = normalize_address(text.removeprefix("<").removesuffix(">"))
    except InvalidAddress as exc:
        return Decision(False, "5.1.7", f"sender address is not valid: {exc}")
    if normalised in {m.lower() for m in mailboxes}:
        return Decision(True, "2.1.0", f"{normalised} is a mailbox of {identity.describe()}")
    return Decision(False, "5.7.1", f"{identity.describe()} may not send as {normalised}")


def advertised_mechanisms(
    tls: bool, verified_client_cert: bool, policy: PolicySettings, auth: AuthSettings | None = None
) -> list[str]:
    """SASL mechanisms to advertise on a connection (nothing before TLS)."""
    if not tls:
        return []
    mechanisms: list[str] = []
    if verified_client_cert:
        mechanisms.append(Mechanism.EXTERNAL.value)
    if auth is not None and auth.oidc is not None:
        mechanisms += [Mechanism.OAUTHBEARER.value, Mechanism.XOAUTH2.value]
    if policy.auth.password_allowed_types:
        mechanisms += [Mechanism.PLAIN.value, Mechanism.LOGIN.value]
    return mechanisms
