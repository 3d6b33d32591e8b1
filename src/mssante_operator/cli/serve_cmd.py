"""`serve`: run the server in the foreground until SIGTERM/SIGINT; SIGHUP reloads the configuration."""

from __future__ import annotations

import typer

from mssante_operator.cli.common import fail, state


def serve(ctx: typer.Context) -> None:
    """Run the server in the foreground: SIGTERM/SIGINT stop gracefully, SIGHUP reloads the config.

    Runs every enabled service (ops endpoint /healthz and /metrics, mail listeners) in one process.

    Refuses to start when the store schema is behind (run `mssante-operator db upgrade`).
    """
    # Imported here: the server's dependencies (aiohttp, prometheus, listeners) are not needed by
    # the other commands and would slow every one of them down.
    from mssante_operator.ops.app import StartupError
    from mssante_operator.ops.compose import serve as serve_forever

    cli = state(ctx)
    settings = cli.settings()
    try:
        code = serve_forever(settings, cli.config_path)
    except StartupError as exc:
        fail(f"cannot start:\n{exc}")
    raise typer.Exit(code)
