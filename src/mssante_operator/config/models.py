"""The validated shape of the configuration file.

Every section forbids unknown keys so that a typo is an error at start, not a silently ignored
setting. Paths are kept as written; `Settings.resolve_paths` makes relative ones relative to the
directory the server runs from (the project root for the demo).
"""

from __future__ import annotations

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


class SmtpSubmissionSettings(Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    starttls_port: Port = 587
    implicit_tls_port: Port = 465
    max_message_size: int = Field(default=25 * 1024 * 1024, ge=1024)


class ImapSettings(Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    starttls_port: Port = 143
    implicit_tls_port: Port = 993


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


class DemoSettings(Section):
    """What `mssante-operator init` creates for a demo instance."""

    domain: str | None = None
    mailboxes: list[DemoMailbox] = Field(default_factory=list)


class DemoMailbox(Section):
    address: str
    type: MailboxType
    owner: str | None = None
    structure_id: str | None = None
    password: SecretStr | None = None


DemoSettings.model_rebuild()
