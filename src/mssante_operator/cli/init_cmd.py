"""`init`: prepare the instance described by the configuration (idempotent)."""

from __future__ import annotations

import typer

from mssante_operator.accounts import AccountError
from mssante_operator.cli.common import console, fail, state
from mssante_operator.ops.bootstrap import prepare_instance
from mssante_operator.store.crypto import CryptoError


def init(ctx: typer.Context) -> None:
    """Prepare this instance: data directory, master key, dev PKI, store schema, demo accounts.

    Safe to run again: it keeps what exists and creates only what is missing.
    """
    settings = state(ctx).settings()
    try:
        report = prepare_instance(settings)
    except (CryptoError, AccountError, OSError, ValueError) as exc:
        fail(f"init failed: {exc}")
    for step in report.steps:
        console.print(f"  • {step}", highlight=False)
    console.print(
        f"[green]instance {settings.instance.name} ready[/]; start it with `mssante-operator serve`"
    )
