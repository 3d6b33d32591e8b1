"""Where encrypted message bodies live.

`MailStore` owns the `message_bodies` row (size, backend, location) and the encryption; a
`BodyStorage` only keeps opaque ciphertext, addressed by the body id, inside the caller's session
so that the database backend commits or rolls back with the rest of the delivery. An object-store
backend (S3-compatible) implements the same three calls: `put` uploads before the transaction
commits (an orphan object after a rollback is harmless and can be swept), `delete` removes the
object once no message refers to it any more.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from mssante_operator.store.models import MessageBody


class BodyNotFound(LookupError):
    """No ciphertext is stored for this body id."""


@runtime_checkable
class BodyStorage(Protocol):
    """Ciphertext storage for message bodies, by body id."""

    #: Value written to `MessageBody.backend` for bodies this storage keeps.
    name: str

    async def put(self, session: AsyncSession, body_id: int, ciphertext: bytes) -> str | None:
        """Store the ciphertext of an existing `message_bodies` row; return its location (or None)."""
        ...

    async def get(self, session: AsyncSession, body_id: int) -> bytes:
        """Return the ciphertext; raise BodyNotFound if there is none."""
        ...

    async def delete(self, session: AsyncSession, body_id: int) -> None:
        """Forget the ciphertext (the caller then deletes the row)."""
        ...


class DatabaseBodyStorage:
    """Ciphertext in the `message_bodies.ciphertext` column of the store itself."""

    name = "database"

    async def put(self, session: AsyncSession, body_id: int, ciphertext: bytes) -> str | None:
        result = await session.execute(
            update(MessageBody)
            .where(MessageBody.id == body_id)
            .values(ciphertext=ciphertext, backend=self.name, location=None)
            .execution_options(synchronize_session=False)
        )
        if getattr(result, "rowcount", 1) == 0:
            raise BodyNotFound(f"message body {body_id} does not exist")
        return None

    async def get(self, session: AsyncSession, body_id: int) -> bytes:
        ciphertext = await session.scalar(select(MessageBody.ciphertext).where(MessageBody.id == body_id))
        if ciphertext is None:
            raise BodyNotFound(f"message body {body_id} has no stored ciphertext")
        return bytes(ciphertext)

    async def delete(self, session: AsyncSession, body_id: int) -> None:
        await session.execute(
            update(MessageBody)
            .where(MessageBody.id == body_id)
            .values(ciphertext=None)
            .execution_options(synchronize_session=False)
        )


def body_aad(body_id: int) -> bytes:
    """Associated data binding a body's ciphertext to its row: swapping ciphertexts fails to decrypt."""
    return b"mssante-operator/body/v1:" + str(int(body_id)).encode("ascii")
