"""Mailbox store: SQLAlchemy models, engine, migrations glue, encrypted body storage."""

from mssante_operator.store.engine import create_engine, is_sqlite, session_factory
from mssante_operator.store.migrate import SchemaState, downgrade, head_revision, schema_state, upgrade

__all__ = [
    "SchemaState",
    "create_engine",
    "downgrade",
    "head_revision",
    "is_sqlite",
    "schema_state",
    "session_factory",
    "upgrade",
]
