"""The periodic trust list refresh that `serve` runs as a service (name, start, stop, reload)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from mssante_operator.config.models import TrustSettings
from mssante_operator.config.settings import Settings
from mssante_operator.ops.logging import get_logger
from mssante_operator.store.models import utcnow
from mssante_operator.trust.fetch import TrustFetchError, refresh_trust_list
from mssante_operator.trust.importer import ImportResult, current_snapshot
from mssante_operator.trust.store import TrustStore

log = get_logger(__name__)

# After a failed fetch, retry after this long, doubling up to the refresh interval.
FIRST_RETRY_SECONDS = 300.0


class TrustRefresher:
    """Fetches the list every `trust.refresh_interval_hours` (0: never), conditional GET each time.

    At start it fetches at once if the active list was not confirmed within the interval, so a
    restart neither hammers ANS nor leaves a stale list for a day.
    """

    name = "trust-refresher"

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        settings: Settings | TrustSettings,
        *,
        trust_store: TrustStore | None = None,
        on_result: Callable[[ImportResult], None] | None = None,
    ) -> None:
        self._sessions = sessions
        self._settings = settings.trust if isinstance(settings, Settings) else settings
        self._trust_store = trust_store
        self._on_result = on_result
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._retry = FIRST_RETRY_SECONDS
        self._idle = asyncio.Event()
        self._idle.set()
        self._force_next = False
        self.last_result: ImportResult | None = None
        self.last_error: str | None = None

    @property
    def interval_seconds(self) -> float:
        return self._settings.refresh_interval_hours * 3600

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        if self.running:
            return
        self._task = asyncio.create_task(self._loop(), name=self.name)

    async def stop(self, grace: float = 0.0) -> None:
        """Stop; a fetch in progress gets `grace` seconds to finish before it is cancelled."""
        task, self._task = self._task, None
        if task is None:
            return
        if grace > 0 and not self._idle.is_set():
            # Only an idle wait is cut short; a running fetch and import get `grace` to complete.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), timeout=grace)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def reload(self, settings: Settings | TrustSettings) -> None:
        """Take new settings; the next wait is recomputed at once."""
        self._settings = settings.trust if isinstance(settings, Settings) else settings
        self._wake.set()

    def refresh_now(self) -> None:
        """Ask for a fetch now (for instance after SIGHUP)."""
        self._force_next = True
        self._wake.set()

    async def refresh_once(self) -> ImportResult | None:
        """One fetch and import; returns None (and records `last_error`) when the fetch failed."""
        self._idle.clear()
        try:
            result = await refresh_trust_list(self._sessions, self._settings)
        except TrustFetchError as exc:
            self.last_error = str(exc)
            log.warning("trust.refresh.failed", error=str(exc))
            return None
        finally:
            self._idle.set()
        self.last_result = result
        self.last_error = None if result.ok else result.reason
        if self._trust_store is not None:
            self._trust_store.invalidate()
        if self._on_result is not None:
            self._on_result(result)
        log.info("trust.refresh.done", outcome=str(result.outcome), entries=result.entries)
        return result

    async def _first_delay(self) -> float:
        """Seconds until the active list is due for a check (0: now)."""
        try:
            snapshot = await current_snapshot(self._sessions)
        except Exception as exc:  # the store may be briefly unavailable at start
            log.warning("trust.refresh.store_unavailable", error=f"{type(exc).__name__}: {exc}")
            return FIRST_RETRY_SECONDS
        if snapshot is None:
            return 0.0
        elapsed = (utcnow() - snapshot.checked_at).total_seconds()
        return max(0.0, self.interval_seconds - elapsed)

    async def _sleep(self, seconds: float | None) -> bool:
        """Sleep `seconds` (None: until woken); True when a reload or refresh_now woke it early."""
        if self._wake.is_set():
            self._wake.clear()
            return True
        try:
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)
        except TimeoutError:
            return False
        self._wake.clear()
        return True

    async def _loop(self) -> None:
        delay = await self._first_delay()
        while True:
            if not self._force_next:
                woken = await self._sleep(delay if self.interval_seconds > 0 else None)
                if woken and not self._force_next:
                    # New settings: wait again, from the active list's age.
                    delay = await self._first_delay()
                    continue
            self._force_next = False
            try:
                result = await self.refresh_once()
            except Exception as exc:  # a store error must not kill the service
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.error("trust.refresh.error", error=self.last_error)
                result = None
            if result is None:
                delay = min(self._retry, self.interval_seconds)
                self._retry = min(self._retry * 2, max(self.interval_seconds, FIRST_RETRY_SECONDS))
            else:
                self._retry = FIRST_RETRY_SECONDS
                delay = self.interval_seconds
