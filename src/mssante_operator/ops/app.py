"""The serve process: shared components, services, start-up checks, signals, reload, shutdown.

`Application` is deliberately small: it owns the life cycle, not the wiring. What runs is decided
in `ops.compose.build_application`, the one place where listeners and workers are plugged in.

Signals:
- SIGTERM / SIGINT: graceful shutdown. Services stop in reverse order of start (front ends first,
  then the workers they feed), all within `[ops] shutdown_grace_seconds`; exit status 0.
  A second signal during shutdown stops waiting for in-flight work (exit status 1).
- SIGHUP: re-read the configuration file. Invalid: log the error and keep running unchanged.
  Valid: log what changed, apply the log level/format, call every service's `reload`, and warn
  about changed settings that only take effect after a restart (bind addresses, store URL).
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from mssante_operator import __version__
from mssante_operator.config import ConfigError, Settings, load_settings, masked_dump, resolve_config_path
from mssante_operator.ops.health import HealthRegistry, load_certificates, safe_url
from mssante_operator.ops.logging import configure_logging, get_logger
from mssante_operator.ops.metrics import Metrics
from mssante_operator.ops.service import Service
from mssante_operator.store import schema_state

log = get_logger(__name__)

T = TypeVar("T")

# A service that overruns its share of the grace period gets this much more before it is abandoned.
STOP_SLACK_SECONDS = 1.0
STARTUP_STORE_TIMEOUT = 15.0

# Settings read once at start; a change on SIGHUP is reported as needing a restart.
RESTART_REQUIRED = (
    "instance.",
    "store.",
    "ops.enabled",
    "ops.host",
    "ops.port",
    "smtp_inbound.enabled",
    "smtp_inbound.host",
    "smtp_inbound.port",
    "smtp_submission.enabled",
    "smtp_submission.host",
    "smtp_submission.starttls_port",
    "smtp_submission.implicit_tls_port",
    "imap.enabled",
    "imap.host",
    "imap.starttls_port",
    "imap.implicit_tls_port",
)


class StartupError(Exception):
    """The process cannot start; the message says what is wrong and how to fix it."""


@dataclass
class Components:
    """Shared components handed to services. The Optional slots are filled by `build_application`
    as the packages providing them land; a service that needs one checks it is set."""

    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    metrics: Metrics
    health: HealthRegistry
    # MERGE(store): mssante_operator.store.MailStore — encrypted body storage (needs the MasterKey).
    mailstore: Any | None = None
    # MERGE(audit): mssante_operator.audit.AuditLog — batched writer; also add it as a service so
    # that it flushes on stop (added before the front ends, so it is stopped after them).
    audit: Any | None = None
    # MERGE(pki): mssante_operator.pki.CertificateValidator — chain + CRL validation of peers.
    validator: Any | None = None
    # MERGE(pki): server/client TLS contexts built from [pki]; rebuilt on reload.
    tls: Any | None = None
    # MERGE(directory): national directory mirror look-ups.
    directory: Any | None = None
    # MERGE(trust): ANS trust list (operator DN <-> domains).
    trust: Any | None = None


StartupCheck = Callable[["Application"], Awaitable[None]]


class Application:
    """Holds settings, shared components and services; runs them until a signal stops it."""

    def __init__(
        self,
        settings: Settings,
        components: Components,
        *,
        config_path: Path | None = None,
    ) -> None:
        self.settings = settings
        self.components = components
        # None means "the default resolution" ($MSSANTE_CONFIG, else config/dev.toml), as at start.
        self.config_path = config_path
        self.services: list[Service] = []
        self._startup_checks: list[StartupCheck] = [check_store_schema, check_server_certificate]
        self._started: list[Service] = []
        self._shutdown = asyncio.Event()
        self._force = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()

    # --- shortcuts ---------------------------------------------------------------------------

    @property
    def engine(self) -> AsyncEngine:
        return self.components.engine

    @property
    def sessions(self) -> async_sessionmaker[AsyncSession]:
        return self.components.sessions

    @property
    def metrics(self) -> Metrics:
        return self.components.metrics

    @property
    def health(self) -> HealthRegistry:
        return self.components.health

    # --- composition -------------------------------------------------------------------------

    def add_service(self, service: Service) -> None:
        """Run `service`; services start in the order added and stop in reverse."""
        if any(s.name == service.name for s in self.services):
            raise ValueError(f"a service named {service.name!r} is already registered")
        self.services.append(service)

    def add_startup_check(self, check: StartupCheck) -> None:
        """`check(app)` raises StartupError to refuse to start (e.g. master key file missing)."""
        self._startup_checks.append(check)

    # --- life cycle --------------------------------------------------------------------------

    async def check_startup(self) -> None:
        """Run every start-up check; raise one StartupError listing every problem."""
        problems: list[str] = []
        for check in self._startup_checks:
            try:
                await check(self)
            except StartupError as exc:
                problems.append(str(exc))
        if problems:
            raise StartupError("\n".join(problems))

    async def start(self) -> None:
        await self.check_startup()
        for service in self.services:
            try:
                await service.start()
            except Exception as exc:
                log.error("service failed to start", service=service.name, error=str(exc))
                await self.stop(grace=0.0)
                raise StartupError(f"service {service.name} failed to start: {exc}") from exc
            self._started.append(service)
        # Start-up leaves hundreds of thousands of long-lived objects (modules, certificates,
        # trust list, caches). Freezing them keeps the collector's full passes from rescanning
        # them in the middle of a mail transaction (a ms-scale pause at the look-ups' p99).
        gc.collect()
        gc.freeze()

    async def stop(self, grace: float) -> None:
        """Stop started services in reverse order within one shared deadline of `grace` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self._started:
            service = self._started.pop()
            remaining = max(0.0, deadline - loop.time())
            try:
                await asyncio.wait_for(service.stop(remaining), remaining + STOP_SLACK_SECONDS)
            except TimeoutError:
                log.error("service did not stop within the grace period", service=service.name)
            except Exception as exc:
                log.error("service failed to stop cleanly", service=service.name, error=str(exc))
        self.metrics.up.set(0)

    async def close(self) -> None:
        """Release shared resources once services are stopped."""
        mailstore = self.components.mailstore
        if mailstore is not None and hasattr(mailstore, "close"):
            # The group commit of IMAP writes: its thread and SQLite connection.
            await mailstore.close()
        await self.engine.dispose()

    def request_shutdown(self) -> None:
        """What SIGTERM does; usable from tests and embedding code."""
        self._shutdown.set()

    # --- reload ------------------------------------------------------------------------------

    async def reload(self, new_settings: Settings | None = None) -> bool:
        """Re-read the configuration (or use `new_settings`) and apply it. False when invalid."""
        async with self._reload_lock:
            if new_settings is None:
                try:
                    new_settings = await asyncio.to_thread(load_settings, self.config_path)
                except ConfigError as exc:
                    self.metrics.config_reloads.labels(outcome="invalid").inc()
                    log.error(
                        "configuration reload failed, keeping the running configuration", error=str(exc)
                    )
                    return False
            old = self.settings
            changed = settings_diff(old, new_settings)
            restart = [key for key in changed if key.startswith(RESTART_REQUIRED)]
            self.settings = new_settings
            if (old.logging.format, old.logging.level) != (
                new_settings.logging.format,
                new_settings.logging.level,
            ):
                configure_logging(new_settings.logging.format, new_settings.logging.level)
            for service in list(self._started):
                try:
                    await service.reload(new_settings)
                except Exception as exc:
                    log.error("service failed to reload", service=service.name, error=str(exc))
            self.metrics.config_reloads.labels(outcome="applied").inc()
            log.info("configuration reloaded", changed=changed or "nothing")
            if restart:
                log.warning("changed settings take effect only after a restart", keys=restart)
            return True

    # --- running -----------------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _on_terminate(self, signame: str) -> None:
        if self._shutdown.is_set():
            log.warning("second signal, no longer waiting for in-flight work", signal=signame)
            self._force.set()
            return
        log.info("shutdown requested", signal=signame, grace_seconds=self.settings.ops.shutdown_grace_seconds)
        self._shutdown.set()

    def _on_hangup(self) -> None:
        log.info("reload requested", signal="SIGHUP", config=str(resolve_config_path(self.config_path)))
        self._spawn(self.reload())

    async def run_forever(self) -> int:
        """Start, serve until SIGTERM/SIGINT, stop gracefully. Returns the exit status.

        Raises StartupError when a start-up check or a service's start fails.
        """
        loop = asyncio.get_running_loop()
        installed: list[signal.Signals] = []
        try:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._on_terminate, sig.name)
                installed.append(sig)
            loop.add_signal_handler(signal.SIGHUP, self._on_hangup)
            installed.append(signal.SIGHUP)

            log.info(
                "starting",
                version=__version__,
                config=str(resolve_config_path(self.config_path)),
                pid=os.getpid(),
            )
            await self.start()
            log.info(
                "serving",
                instance=self.settings.instance.name,
                services=[s.name for s in self.services],
                event_loop=type(loop).__module__.split(".")[0],
            )
            await self._shutdown.wait()
            stopping = self._spawn(self.stop(self.settings.ops.shutdown_grace_seconds))
            forced = self._spawn(self._force.wait())
            await asyncio.wait({stopping, forced}, return_when=asyncio.FIRST_COMPLETED)
            forced.cancel()
            if not stopping.done():
                stopping.cancel()
                await asyncio.gather(stopping, return_exceptions=True)
                log.warning("stopped without waiting for in-flight work")
                return 1
            stopping.result()
            log.info("stopped", instance=self.settings.instance.name)
            return 0
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self.close()


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): data}


def settings_diff(old: Settings, new: Settings) -> list[str]:
    """Dotted names of the settings that differ (values are not returned: some are secrets)."""
    a, b = _flatten(masked_dump(old)), _flatten(masked_dump(new))
    changed = {key for key in a.keys() | b.keys() if a.get(key) != b.get(key)}
    # A secret's masked form never changes: compare the real values too.
    if old.store.url.get_secret_value() != new.store.url.get_secret_value():
        changed.add("store.url")
    return sorted(changed)


# --- built-in start-up checks ------------------------------------------------------------------


async def check_store_schema(app: Application) -> None:
    """The store is reachable and its schema is at the newest migration."""
    url = safe_url(app.settings.store.url.get_secret_value())
    try:
        state = await asyncio.wait_for(schema_state(app.engine), STARTUP_STORE_TIMEOUT)
    except TimeoutError:
        raise StartupError(
            f"cannot reach the store at {url}: no answer within {STARTUP_STORE_TIMEOUT:g}s"
        ) from None
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise StartupError(f"cannot reach the store at {url}: {first}") from None
    if not state.is_current:
        at = f"revision {state.current}" if state.current else "empty (no migration applied)"
        raise StartupError(
            f"the store schema is {at}, this version needs revision {state.head}: "
            "run `mssante-operator db upgrade` (with the same --config) and start again"
        )


def _readable(path: Path, key: str) -> bytes | str:
    """The file's bytes, or a message naming the key, the path and the problem."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return f"{key} = {path}: file not found"
    except IsADirectoryError:
        return f"{key} = {path}: is a directory, expected a file"
    except PermissionError:
        return f"{key} = {path}: permission denied (the server runs as a user that cannot read it)"
    except OSError as exc:
        return f"{key} = {path}: cannot read ({exc.strerror})"


async def check_server_certificate(app: Application) -> None:
    """`pki.server_cert` holds a certificate and `pki.server_key` is readable."""
    pki = app.settings.pki
    problems: list[str] = []
    cert = _readable(pki.server_cert, "pki.server_cert")
    if isinstance(cert, str):
        problems.append(cert)
    else:
        try:
            load_certificates(pki.server_cert)
        except ValueError:
            problems.append(
                f"pki.server_cert = {pki.server_cert}: no certificate in the file (expected PEM or DER)"
            )
    key = _readable(pki.server_key, "pki.server_key")
    if isinstance(key, str):
        problems.append(key)
    if problems:
        raise StartupError("\n".join(problems))
