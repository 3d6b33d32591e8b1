"""Opening the mail store from the CLI: engine, schema check, master key, `MailStore`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from mssante_operator.cli.common import EXIT_CONFIG, fail, store_engine
from mssante_operator.config import Settings
from mssante_operator.store import schema_state, session_factory
from mssante_operator.store.crypto import KeyFileError, MasterKey
from mssante_operator.store.mailstore import MailStore, body_storage_for


def load_master_key(settings: Settings) -> MasterKey:
    try:
        return MasterKey.load(settings.store.master_key_file)
    except KeyFileError as exc:
        fail(str(exc), code=EXIT_CONFIG)


@asynccontextmanager
async def open_mailstore(settings: Settings) -> AsyncIterator[MailStore]:
    """A MailStore on the configured store; exits with a clear error if it cannot be used."""
    master_key = load_master_key(settings)
    async with store_engine(settings) as engine:
        try:
            state = await schema_state(engine)
        except Exception as exc:
            fail(f"cannot read the store: {exc}")
        if not state.is_current:
            fail(
                f"store schema is at {state.current or 'empty'}, newest is {state.head}: "
                "run `mssante-operator db upgrade`"
            )
        yield MailStore(session_factory(engine), master_key, body_storage_for(settings.store.body_backend))
