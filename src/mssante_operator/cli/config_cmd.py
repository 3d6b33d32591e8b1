"""`config check`: validate the configuration and print it with secrets masked."""

from __future__ import annotations

import json

import typer

from mssante_operator.cli.common import console, state
from mssante_operator.config import masked_dump

app = typer.Typer(help="Inspect and validate the configuration.", no_args_is_help=True)


@app.command("check")
def check(ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Validate the configuration file and print the effective settings (secrets masked)."""
    cli = state(ctx)
    settings = cli.settings()
    data = masked_dump(settings)
    if as_json:
        console.print_json(json.dumps(data))
        return
    console.print(f"[green]configuration OK[/]: {cli.config_path or 'default'}")
    for section, values in data.items():
        console.print(f"[bold]\\[{section}][/]")
        if isinstance(values, dict):
            for key, value in values.items():
                console.print(f"  {key} = {json.dumps(value, ensure_ascii=False)}", highlight=False)
