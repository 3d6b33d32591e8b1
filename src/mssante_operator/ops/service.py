"""What the serve process runs: services with a start / stop / reload life cycle.

A service is anything the process keeps running: a listener (ops HTTP, SMTP inbound, submission,
IMAP) or a background worker (audit batch writer, relay queue, directory sync). `Application`
starts them in the order they were added and stops them in reverse order, so workers that
front ends feed (audit, queue) are added first and stopped last.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from mssante_operator.config import Settings


@runtime_checkable
class Service(Protocol):
    """A long-running part of the serve process."""

    name: str

    async def start(self) -> None:
        """Bind / spawn; log what listens where, e.g.
        `listening service=smtp-inbound address=127.0.0.1:2525 tls=starttls`.

        Raise (any exception) to abort start-up: the process stops what already started and exits
        non-zero with the message.
        """
        ...

    async def stop(self, grace: float) -> None:
        """Stop accepting new work at once, let in-flight work finish within `grace` seconds,
        then cancel what is left. Must return soon after `grace` has elapsed."""
        ...

    async def reload(self, settings: Settings) -> None:
        """Apply what can change without a restart (CRLs, trust list, certificates, limits).

        Called on SIGHUP after the new configuration validated. Settings that need a restart
        (bind addresses, store URL) are reported by the application and may be ignored here.
        """
        ...


class ServiceBase:
    """Convenience base: a no-op `reload` for services with nothing to reload."""

    name: str = "service"

    async def reload(self, settings: Settings) -> None:
        return None
