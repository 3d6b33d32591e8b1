"""The `mssante-operator` command line. Thin: parse arguments, call the packages, print."""

from __future__ import annotations

from pathlib import Path

import typer

from mssante_operator import __version__
from mssante_operator.cli import config_cmd, db_cmd, directory_cmd
from mssante_operator.cli.common import CliState

app = typer.Typer(
    help="mssante-operator: an MSSanté operator mail server (SMTP with mutual TLS, submission, IMAP).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(config_cmd.app, name="config")
app.add_typer(db_cmd.app, name="db")
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
