"""Alembic environment: runs on the connection handed in by `mssante_operator.store.migrate`."""

from __future__ import annotations

from alembic import context

from mssante_operator.directory.models import SNAPSHOT_TABLE
from mssante_operator.store.schema import metadata

target_metadata = metadata
config = context.config


def include_object(obj: object, name: str | None, type_: str, reflected: bool, compare_to: object) -> bool:
    # The directory mirror's per-snapshot tables are created by imports, not by migrations.
    return not (type_ == "table" and reflected and name is not None and SNAPSHOT_TABLE.match(name))


def run() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("run migrations through `mssante-operator db upgrade`")
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        include_object=include_object,
    )
    with context.begin_transaction():
        context.run_migrations()


run()
