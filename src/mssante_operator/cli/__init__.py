"""The `mssante-operator` command line. Thin: parse arguments, call the packages, print."""

from __future__ import annotations

from pathlib import Path

import typer

from mssante_operator import __version__
from mssante_operator.cli import (
    audit_cmd,
    config_cmd,
    db_cmd,
    directory_cmd,
    domain_cmd,
    init_cmd,
    keys_cmd,
    mailbox_cmd,
    pki_cmd,
    queue_cmd,
    serve_cmd,
    trust_cmd,
)
from mssante_operator.cli.common import CliState

app = typer.Typer(
    help="mssante-operator: an MSSanté operator mail server (SMTP with mutual TLS, submission, IMAP).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.command("init")(init_cmd.init)
app.add_typer(config_cmd.app, name="config")
app.add_typer(db_cmd.app, name="db")
app.add_typer(pki_cmd.app, name="pki")
app.add_typer(queue_cmd.app, name="queue")
app.add_typer(domain_cmd.app, name="domain")
app.add_typer(mailbox_cmd.app, name="mailbox")
app.add_typer(keys_cmd.app, name="keys")
app.add_typer(audit_cmd.app, name="audit")
app.command("serve")(serve_cmd.serve)
app.add_typer(trust_cmd.app, name="trust")
app.add_typer(directory_cmd.app, name="directory")


def _version(value: bool) -> None:
    if value:
        typer.echo(__version__)
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    config: Path | None = typer.Option(
        None,
        "--config",
        "-c",
        help="Configuration file (default: $MSSANTE_CONFIG, else config/dev.toml).",
        envvar=None,
    ),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    ctx.obj = CliState(config_path=config)


def main() -> None:
    app()
