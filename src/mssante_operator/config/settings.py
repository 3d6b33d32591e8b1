"""Root settings object and loading from a TOML file with `MSSANTE_*` environment overrides."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from mssante_operator.config.models import (
    AuditSettings,
    AuthSettings,
    DemoSettings,
    DirectorySettings,
    ImapSettings,
    InstanceSettings,
    LoggingSettings,
    OpsSettings,
    PkiSettings,
    PolicySettings,
    RelaySettings,
    SmtpInboundSettings,
    SmtpSubmissionSettings,
    StoreSettings,
    TrustSettings,
)

DEFAULT_CONFIG_PATH = Path("config/dev.toml")
CONFIG_ENV_VAR = "MSSANTE_CONFIG"


class ConfigError(Exception):
    """The configuration cannot be used; the message names the file, the key and the reason."""


class Settings(BaseSettings):
    """Effective configuration: the TOML file, then `MSSANTE_<SECTION>__<KEY>` variables on top."""

    model_config = SettingsConfigDict(
        env_prefix="MSSANTE_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    instance: InstanceSettings
    store: StoreSettings = StoreSettings()
    pki: PkiSettings
    smtp_inbound: SmtpInboundSettings = SmtpInboundSettings()
    smtp_submission: SmtpSubmissionSettings = SmtpSubmissionSettings()
    imap: ImapSettings = ImapSettings()
    relay: RelaySettings = RelaySettings()
    ops: OpsSettings = OpsSettings()
    logging: LoggingSettings = LoggingSettings()
    audit: AuditSettings = AuditSettings()
    policy: PolicySettings = PolicySettings()
    auth: AuthSettings = AuthSettings()
    demo: DemoSettings = DemoSettings()
    trust: TrustSettings = TrustSettings()
    directory: DirectorySettings = DirectorySettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment first: an operator's MSSANTE_* variable beats the file.
        return (env_settings, init_settings)


def resolve_config_path(path: Path | None) -> Path:
    """`--config` if given, else `$MSSANTE_CONFIG`, else `config/dev.toml`."""
    if path is not None:
        return path
    env = os.environ.get(CONFIG_ENV_VAR)
    return Path(env) if env else DEFAULT_CONFIG_PATH


def _format_validation_error(path: Path, error: ValidationError) -> str:
    lines = [f"{path}: invalid configuration ({error.error_count()} problem(s))"]
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(root)"
        reason = item["msg"]
        if item["type"] == "extra_forbidden":
            reason = "unknown key (not a setting of this section)"
        elif item["type"] == "missing":
            reason = "required key is missing"
        lines.append(f"  {key}: {reason}")
    return "\n".join(lines)


def load_settings(path: Path | None = None) -> Settings:
    """Read, validate and return the settings; raise ConfigError with a precise message."""
    config_path = resolve_config_path(path)
    try:
        raw_text = config_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{config_path}: configuration file not found") from None
    except OSError as exc:
        raise ConfigError(f"{config_path}: cannot read configuration file: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{config_path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        data: dict[str, Any] = tomllib.loads(raw_text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{config_path}: not valid TOML: {exc}") from None
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(config_path, exc)) from None


def masked_dump(settings: Settings) -> dict[str, Any]:
    """The effective settings as plain data, with every secret replaced by '**********'."""
    dumped: dict[str, Any] = settings.model_dump(mode="json")
    return dumped
