"""The validated shape of the configuration file.

Every section forbids unknown keys so that a typo is an error at start, not a silently ignored
setting. Paths are kept as written; `Settings.resolve_paths` makes relative ones relative to the
directory the server runs from (the project root for the demo).
"""

from __future__ import annotations

from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

Port = Annotated[int, Field(ge=1, le=65535)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MailboxType(StrEnum):
    """MSSanté mailbox ("BAL") types."""

    PER = "PER"
    ORG = "ORG"
    APP = "APP"
    CAB = "CAB"


class InstanceSettings(Section):
    name: str = Field(default="mssante-operator", min_length=1)
    hostname: str = Field(min_length=1, description="FQDN of this MTA; the CN of its server certificate")
    data_dir: Path = Path("var")


class StoreSettings(Section):
    url: SecretStr = SecretStr("sqlite+aiosqlite:///var/store.db")
    master_key_file: Path = Path("var/master.key")
    body_backend: Literal["database"] = "database"
    pool_size: int = Field(default=10, ge=1, le=500)
    echo_sql: bool = False
    # QRESYNC tombstones (expunged UIDs) kept per folder; a client that last synchronised before
    # the oldest kept one is told every absent UID instead of the exact list.
    tombstone_max_age_days: int = Field(default=90, ge=1)
    tombstone_max_per_folder: int = Field(default=100_000, ge=1)
    # In-process cache of decrypted message summaries (header data for IMAP SEARCH and FETCH
    # ENVELOPE/BODYSTRUCTURE), shared by all sessions; memory only, never logged; 0 disables it.
    # About 0.65 MiB per 1,000 messages searched by header, ~1.7 MiB per 1,000 fetched ENVELOPEs.
    summary_cache_mb: int = Field(default=128, ge=0, le=65536)

    @field_validator("url")
    @classmethod
    def _known_driver(cls, value: SecretStr) -> SecretStr:
        url = value.get_secret_value()
        if not (url.startswith("sqlite+aiosqlite://") or url.startswith("postgresql+asyncpg://")):
            raise ValueError("must start with sqlite+aiosqlite:// or postgresql+asyncpg://")
        return value


class PersonIdSource(StrEnum):
    CN = "cn"
    SERIAL_NUMBER = "serialNumber"
    OID = "oid"


class PkiSettings(Section):
    ca_files: list[Path] = Field(
        default_factory=list, description="IGC-Santé roots and intermediates (.pem, .cer DER, .p7b)"
    )
    crl_files: list[Path] = Field(default_factory=list, description="CRLs (DER or PEM)")
    crl_dirs: list[Path] = Field(default_factory=list, description="directories whose *.crl/*.pem are CRLs")
    require_crl: bool = True
    server_cert: Path
    server_key: Path
    dev_ca_dir: Path | None = Field(default=None, description="dev PKI directory used by `pki issue-*`")
    person_id_source: PersonIdSource = PersonIdSource.CN
    person_id_oid: str | None = None
    expiry_warning_days: int = Field(default=30, ge=1)


class TlsListener(Section):
    host: str = "127.0.0.1"
    port: Port


class SmtpInboundSettings(Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: Port = 25
    max_message_size: int = Field(default=25 * 1024 * 1024, ge=1024)
    max_recipients: int = Field(default=100, ge=1, description="RCPT TO per message (more: 452 4.5.3)")
    max_line_length: int = Field(default=1000, ge=80, description="octets per DATA line, CRLF included")
    max_header_count: int = Field(default=500, ge=10)
    max_bad_commands: int = Field(default=20, ge=1, description="syntax/sequence errors before 421")
    max_connections: int = Field(default=500, ge=1)
    idle_timeout_seconds: float = Field(default=300.0, gt=0, description="between commands (RFC 5321: 5 min)")
    data_timeout_seconds: float = Field(default=600.0, gt=0, description="silence allowed inside DATA")
    tls_client_certificate: Literal["request", "require"] = Field(
        default="request",
        description="request: a missing certificate is refused with an SMTP reply after STARTTLS; "
        "require: the TLS handshake itself fails without one",
    )
    suspended_mailbox: Literal["temporary", "permanent"] = "temporary"
    closed_mailbox: Literal["unknown", "disabled"] = "unknown"


class SmtpSubmissionSettings(Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    starttls_port: Port = 587
    implicit_tls_port: Port = 465
    max_message_size: int = Field(default=25 * 1024 * 1024, ge=1024)
    max_recipients: int = Field(default=100, ge=1, description="RCPT TO per message (more: 452 4.5.3)")
    max_line_length: int = Field(default=1000, ge=80, description="octets per DATA line, CRLF included")
    max_header_count: int = Field(default=500, ge=10)
    max_bad_commands: int = Field(default=20, ge=1, description="syntax/sequence errors before 421")
    max_connections: int = Field(default=500, ge=1)
    idle_timeout_seconds: float = Field(default=300.0, gt=0)
    data_timeout_seconds: float = Field(default=600.0, gt=0)
    max_auth_failures: int = Field(
        default=3, ge=1, description="failed AUTH commands in one session before 421 and disconnect"
    )
    auth_failure_delay_max_seconds: float = Field(
        default=5.0, ge=0, description="longest pause before answering a failed AUTH (rate-limit delay)"
    )
    unlisted_recipient: Literal["accept", "refuse"] = Field(
        default="accept",
        description="a recipient the national directory mirror does not list: accept (and note it) "
        "or refuse with 550 5.1.1",
    )
    suspended_mailbox: Literal["temporary", "permanent"] = "temporary"


class ImapSettings(Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    starttls_port: Port = 143
    implicit_tls_port: Port = 993
    autologout_seconds: float = Field(default=1800.0, gt=0, description="idle connection closed after")
    idle_timeout_seconds: float = Field(default=1800.0, gt=0, description="IDLE ended (BYE) after")
    command_timeout_seconds: float = Field(default=120.0, gt=0, description="a started command must end")
    max_bad_commands: int = Field(default=10, ge=1, le=1000)
    max_auth_failures: int = Field(default=3, ge=1, le=100)
    append_limit: int | None = Field(
        default=None, ge=1024, description="APPENDLIMIT in bytes; default: smtp_inbound.max_message_size"
    )
    multiappend_limit: int | None = Field(
        default=None,
        ge=1024,
        description="MULTIAPPEND (RFC 3502): bytes of all the messages of one APPEND with several, "
        "buffered until the command ends; default: the APPENDLIMIT",
    )
    multiappend_max_messages: int = Field(
        default=1000, ge=1, le=100_000, description="MULTIAPPEND: messages in one APPEND at most"
    )
    change_poll_seconds: float = Field(
        default=0.5, ge=0, description="how often IDLE checks for other processes' changes (0: never)"
    )


def parse_duration(text: str) -> timedelta:
    """'90s', '5m', '4h', '5d' or a bare number of seconds."""
    value = text.strip().lower()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        seconds = float(value[:-1]) * units[value[-1]] if value and value[-1] in units else float(value)
    except ValueError:
        raise ValueError(f"not a duration (use e.g. 90s, 5m, 4h, 5d): {text!r}") from None
    if seconds <= 0:
        raise ValueError(f"duration must be positive: {text!r}")
    return timedelta(seconds=seconds)


class RelaySettings(Section):
    """Outbound relay to other operators: fixed routes, retry schedule, concurrency."""

    enabled: bool = True
    transport: dict[str, str] = Field(
        default_factory=dict,
        description="fixed routes, domain (or .parent) -> host:port; others are routed by DNS MX",
    )
    retry_intervals: list[str] = Field(default_factory=lambda: ["5m", "15m", "30m", "1h"])
    retry_repeat: str = "1h"
    give_up_after: str = "5d"
    delay_notice_after: str = "4h"
    concurrency: int = Field(default=20, ge=1, le=1000)
    poll_interval_seconds: float = Field(default=5.0, gt=0)
    command_timeout_seconds: float = Field(default=60.0, gt=0)
    connections_per_peer: int = Field(
        default=5, ge=1, le=100, description="sessions open at once to one peer (host:port)"
    )
    connection_idle_seconds: float = Field(
        default=10.0,
        ge=0,
        le=3600,
        description="keep a verified session to a peer open this long for the next entry; 0: never",
    )
    connection_max_age_seconds: float = Field(
        default=300.0,
        gt=0,
        le=86400,
        description="a peer session is not reused past this age (its certificate is checked anew)",
    )

    @field_validator("retry_repeat", "give_up_after", "delay_notice_after")
    @classmethod
    def _duration(cls, value: str) -> str:
        parse_duration(value)
        return value

    @field_validator("retry_intervals")
    @classmethod
    def _durations(cls, value: list[str]) -> list[str]:
        for item in value:
            parse_duration(item)
        return value


class OpsSettings(Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: Port = 9025
    shutdown_grace_seconds: float = Field(default=20.0, ge=0)


class LoggingSettings(Section):
    format: Literal["console", "json"] = "console"
    level: Literal["debug", "info", "warning", "error"] = "info"


class AuditSettings(Section):
    batch_size: int = Field(default=200, ge=1)
    flush_interval_ms: int = Field(default=50, ge=1)


class AuthPolicySettings(Section):
    password_allowed_types: list[MailboxType] = Field(
        default_factory=list,
        description="mailbox types that may authenticate with a password alone (default: none)",
    )


class PolicySettings(Section):
    auth: AuthPolicySettings = AuthPolicySettings()


ANS_TRUST_LIST_URL = "https://espacedeconfiance.mssante.fr/listeblanchemssante.xml"


class TrustSettings(Section):
    """The ANS trust list ("liste blanche"): where to fetch it, how often, what to refuse."""

    url: str = Field(default=ANS_TRUST_LIST_URL, description="HTTPS URL of ANS's XML trust list")
    ca_file: Path | None = Field(
        default=None,
        description="CAs (PEM, DER .cer or .p7b) that verify the list's server; default: system CAs",
    )
    refresh_interval_hours: float = Field(default=24.0, ge=0, description="0 disables periodic refresh")
    max_shrink: float = Field(
        default=0.2, ge=0, le=1, description="refuse a list losing more than this share"
    )
    fetch_timeout_seconds: float = Field(default=60.0, gt=0)
    max_size_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    health_max_age_hours: float = Field(
        default=72.0, ge=0, description="/healthz degrades when the list was not confirmed for this long"
    )

    @field_validator("url")
    @classmethod
    def _https(cls, value: str) -> str:
        if not value.startswith("https://"):
            raise ValueError("must be an https:// URL")
        return value


JwtAlgorithm = Literal["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"]


def _default_algorithms() -> list[JwtAlgorithm]:
    return ["RS256", "ES256", "PS256"]


class OidcSettings(Section):
    """The OpenID Connect issuer whose bearer tokens (OAUTHBEARER / XOAUTH2) are accepted."""

    issuer: str = Field(min_length=9, description="issuer URL, exactly as in the tokens' `iss` claim")
    jwks_uri: str | None = Field(
        default=None,
        description="JWKS URL; default: discovered from <issuer>/.well-known/openid-configuration",
    )
    audience: list[str] = Field(min_length=1, description="accepted `aud` values (this server's client ids)")
    national_id_claim: str = Field(default="preferred_username", min_length=1)
    national_id_prefix: str = Field(
        default="",
        max_length=1,
        description='prepended when the claim holds a bare RPPS ("8") or ADELI ("0")',
    )
    allowed_algorithms: list[JwtAlgorithm] = Field(default_factory=_default_algorithms, min_length=1)
    clock_skew_seconds: float = Field(default=60.0, ge=0, le=600)
    jwks_refresh_seconds: float = Field(default=3600.0, ge=60)
    jwks_min_refetch_seconds: float = Field(default=60.0, ge=0)
    http_timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    ca_file: Path | None = Field(default=None, description="CA bundle trusted for the issuer's HTTPS")

    @field_validator("issuer", "jwks_uri")
    @classmethod
    def _https(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("https://"):
            raise ValueError("must be an https:// URL (keys fetched over plain HTTP could be forged)")
        return value

    @field_validator("national_id_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if value not in ("", "0", "8"):
            raise ValueError('must be "" (claim holds the national id), "8" (bare RPPS) or "0" (bare ADELI)')
        return value


class RateLimitPolicy(Section):
    """Growing delays after failures: none for `free_failures`, then base_delay doubling up to max_delay;
    `max_failures` within `window_seconds` lock the key out for `lockout_seconds`."""

    max_failures: int = Field(default=10, ge=1)
    free_failures: int = Field(default=2, ge=0)
    window_seconds: float = Field(default=900.0, gt=0)
    base_delay: float = Field(default=1.0, ge=0)
    max_delay: float = Field(default=30.0, ge=0)
    lockout_seconds: float = Field(default=900.0, ge=0)


class RateLimitSettings(Section):
    account: RateLimitPolicy = RateLimitPolicy()
    # Hospitals put many users behind one NAT address: the per-address policy is looser.
    ip: RateLimitPolicy = RateLimitPolicy(max_failures=50, free_failures=10, base_delay=0.5)
    max_tracked_keys: int = Field(default=100_000, ge=10)


class AuthSettings(Section):
    oidc: OidcSettings | None = None
    ratelimit: RateLimitSettings = RateLimitSettings()
    delegate_structure_org_mailboxes: bool = Field(
        default=False,
        description="a practitioner may also act as the ORG mailboxes of the structures of his PER mailboxes",
    )


class LdapAttributeMap(Section):
    """Which LDAP attribute feeds each field of the mirror; leave a field empty to not map it."""

    national_id: str | None = Field(default="employeeNumber", description="8+RPPS or 0+ADELI")
    rpps: str | None = None
    adeli: str | None = None
    last_name: str = "sn"
    first_name: str | None = "givenName"
    civility: str | None = None
    profession_code: str | None = None
    profession_label: str | None = "title"
    specialty_label: str | None = None
    structure_id: str | None = None
    structure_name: str | None = "o"
    service: str | None = "ou"
    mailbox: str | None = Field(default="mail", description="attribute holding MSSanté addresses")
    mailbox_type: str | None = None
    listerouge: str | None = None
    active: str | None = None


class DirectoryLdapSettings(Section):
    """`directory sync-ldap`: a hospital's own OpenLDAP / Active Directory, or a regional directory."""

    url: str | None = Field(default=None, description="ldap://host:389 or ldaps://host:636")
    start_tls: bool = True
    bind_dn: str | None = None
    bind_password: SecretStr | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    ca_file: Path | None = None
    base_dn: str = ""
    filter: str = "(objectClass=inetOrgPerson)"
    page_size: int = Field(default=500, ge=1, le=100_000)
    timeout_seconds: float = Field(default=10.0, gt=0)
    incremental: bool = True
    full_sync_hours: float = Field(default=24.0, gt=0)
    mailbox_domains: list[str] = Field(default_factory=list)
    default_structure_id: str | None = None
    attributes: LdapAttributeMap = LdapAttributeMap()

    @field_validator("url")
    @classmethod
    def _ldap_scheme(cls, value: str | None) -> str | None:
        if value is not None and not (value.startswith("ldap://") or value.startswith("ldaps://")):
            raise ValueError("must start with ldap:// or ldaps://")
        return value


class DirectorySettings(Section):
    """The national directory mirror: imports, look-ups and the exchange policy built on them."""

    max_reject_rate: float = Field(default=0.01, ge=0, le=1)
    max_age_days: float = Field(default=8, gt=0)
    batch_size: int = Field(default=5000, ge=1, le=100_000)
    cache_size: int = Field(default=100_000, ge=0)
    cache_ttl_seconds: float = Field(default=60.0, ge=0)
    refresh_seconds: float = Field(default=5.0, ge=0)
    require_known_sender: bool = True
    require_published_recipient: bool = True
    require_active_practitioner: bool = True
    exempt_domains: list[str] = Field(default_factory=lambda: ["patient.mssante.fr"])
    ldap: DirectoryLdapSettings = DirectoryLdapSettings()


class DemoSettings(Section):
    """What `mssante-operator init` creates for a demo instance."""

    domain: str | None = None
    mailboxes: list[DemoMailbox] = Field(default_factory=list)
    peer_operators: list[DemoPeer] = Field(
        default_factory=list, description="other operators' (domain, certificate DN) in the sample trust list"
    )


class DemoMailbox(Section):
    address: str
    type: MailboxType
    owner: str | None = None
    structure_id: str | None = None
    password: SecretStr | None = None


class DemoPeer(Section):
    domain: str
    dn: str


DemoSettings.model_rebuild()
