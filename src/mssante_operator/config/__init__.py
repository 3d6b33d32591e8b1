"""Configuration: one TOML file validated by pydantic models, `MSSANTE_*` environment overrides."""

from mssante_operator.config.models import MailboxType
from mssante_operator.config.settings import (
    ConfigError,
    Settings,
    load_settings,
    masked_dump,
    resolve_config_path,
)

__all__ = ["ConfigError", "MailboxType", "Settings", "load_settings", "masked_dump", "resolve_config_path"]
