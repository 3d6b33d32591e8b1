"""Alembic environment: runs on the connection handed in by `mssante_operator.store.migrate`."""

from __future__ import annotations

from alembic import context

import mssante_operator.directory.models  # noqa: F401  (directory tables)
from mssante_operator.store.models import Base

target_metadata = Base.metadata
config = context.config


def run() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("run migrations through `mssante-operator db upgrade`")
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


run()
