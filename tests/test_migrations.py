"""Migrations: upgrade from empty, round trip, and no drift between models and migrations."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, inspect
from sqlalchemy.ext.asyncio import AsyncEngine

from mssante_operator.store import create_engine, downgrade, head_revision, schema_state, upgrade
from mssante_operator.store.schema import metadata


def _tables(conn: Connection) -> set[str]:
    return set(inspect(conn).get_table_names())


def _diff(conn: Connection) -> list[Any]:
    ctx = MigrationContext.configure(conn, opts={"compare_type": True})
    return list(compare_metadata(ctx, metadata))


async def test_upgrade_from_empty_creates_every_table(store_url: str) -> None:
    eng = create_engine(store_url)
    try:
        assert (await schema_state(eng)).current is None
        await upgrade(eng)
        state = await schema_state(eng)
        assert state.is_current and state.current == head_revision()
        async with eng.connect() as conn:
            tables = await conn.run_sync(_tables)
        assert set(metadata.tables) <= tables
    finally:
        await eng.dispose()


async def test_downgrade_upgrade_round_trip(engine: AsyncEngine) -> None:
    await downgrade(engine, "base")
    async with engine.connect() as conn:
        tables = await conn.run_sync(_tables)
    assert not (set(metadata.tables) & tables)
    await upgrade(engine)
    assert (await schema_state(engine)).is_current


async def test_models_and_migrations_agree(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        diff = await conn.run_sync(_diff)
    assert diff == [], f"models and migrations differ; write a migration: {diff}"
