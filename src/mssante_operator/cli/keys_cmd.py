"""`keys generate|check`: the master key that encrypts every stored message."""

from __future__ import annotations

import typer

from mssante_operator.cli.common import EXIT_CONFIG, console, fail, run, state
from mssante_operator.cli.mailstore_ctx import open_mailstore
from mssante_operator.store.crypto import KeyFileError, KeyUnwrapError, MasterKey

app = typer.Typer(help="The master key of encryption at rest.", no_args_is_help=True)


@app.command("generate")
def generate_cmd(ctx: typer.Context) -> None:
    """Create the master key file (store.master_key_file, mode 0600) if it does not exist yet."""
    settings = state(ctx).settings()
    path = settings.store.master_key_file
    if path.exists() or path.is_symlink():
        try:
            key = MasterKey.load(path)
        except KeyFileError as exc:
            fail(str(exc), code=EXIT_CONFIG)
        console.print(
            f"master key file {path} already exists (fingerprint {key.fingerprint}); kept", highlight=False
        )
        return
    try:
        key = MasterKey.generate(path)
    except (KeyFileError, OSError) as exc:
        fail(f"cannot create master key file {path}: {exc}")
    console.print(f"master key file {path} created (fingerprint {key.fingerprint})", highlight=False)
    console.print("back it up now, apart from the database backups: without it no message can be read")


@app.command("check")
def check_cmd(ctx: typer.Context) -> None:
    """Check the key file and that it unwraps every mailbox's data key in the store."""
    settings = state(ctx).settings()

    async def go() -> tuple[str, int]:
        async with open_mailstore(settings) as store:
            return store.master_key_fingerprint, await store.verify_master_key()

    try:
        fingerprint, count = run(go())
    except KeyUnwrapError as exc:
        fail(f"wrong master key: {exc}")
    console.print(
        f"master key {settings.store.master_key_file} (fingerprint {fingerprint}) "
        f"opens all {count} mailbox key(s)",
        highlight=False,
    )
