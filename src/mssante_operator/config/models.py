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


class DemoMailbox(Section):
    address: str
    type: MailboxType
    owner: str | None = None
    structure_id: str | None = None
    password: SecretStr | None = None


DemoSettings.model_rebuild()
