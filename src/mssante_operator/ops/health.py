"""Health checks behind `/healthz`: small async callables that each report one aspect.

Other packages add their own with `Application.health.add(check)`, for instance the directory
mirror's age or the trust list's age (see `age_check`), or the relay queue depth. A check never
raises to its caller: `HealthRegistry.run` turns an exception or a timeout into a failing result.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs7
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from mssante_operator.config.models import PkiSettings
from mssante_operator.store import schema_state


class HealthStatus(StrEnum):
    OK = "ok"
    DEGRADED = "degraded"
    FAILING = "failing"

    @property
    def rank(self) -> int:
        return _RANK[self]


_RANK = {HealthStatus.OK: 0, HealthStatus.DEGRADED: 1, HealthStatus.FAILING: 2}


def worst(statuses: Sequence[HealthStatus]) -> HealthStatus:
    """The most severe status; ok when there is none."""
    return max(statuses, key=lambda s: s.rank, default=HealthStatus.OK)


@dataclass(frozen=True)
class HealthCheck:
    """One check's result. `data` is extra JSON-serialisable detail shown in /healthz."""

    name: str
    status: HealthStatus
    detail: str
    data: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status.value, "detail": self.detail}
        out.update(self.data)
        return out


HealthCheckFn = Callable[[], Awaitable[HealthCheck]]


@dataclass(frozen=True)
class HealthReport:
    status: HealthStatus
    checks: tuple[HealthCheck, ...]

    def as_json(self) -> dict[str, Any]:
        return {
            "status": self.status.value,
            "checks": {check.name: check.as_json() for check in self.checks},
        }


class HealthRegistry:
    """The ordered list of checks `/healthz` runs, concurrently, each within `timeout` seconds."""

    def __init__(self, timeout: float = 5.0) -> None:
        self._checks: list[tuple[str, HealthCheckFn]] = []
        self.timeout = timeout

    def add(self, check: HealthCheckFn, name: str | None = None) -> None:
        """Register `check`; `name` labels it when it raises or times out (default: its __name__)."""
        label: str = name or getattr(check, "__name__", None) or "check"
        self._checks.append((label, check))

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self._checks]

    async def _run_one(self, name: str, check: HealthCheckFn) -> HealthCheck:
        try:
            return await asyncio.wait_for(check(), self.timeout)
        except TimeoutError:
            return HealthCheck(name, HealthStatus.FAILING, f"check did not answer within {self.timeout:g}s")
        except Exception as exc:
            return HealthCheck(name, HealthStatus.FAILING, f"check raised {type(exc).__name__}: {exc}")

    async def run(self) -> HealthReport:
        results = await asyncio.gather(*(self._run_one(name, fn) for name, fn in self._checks))
        return HealthReport(worst([r.status for r in results]), tuple(results))


def safe_url(url: str) -> str:
    """The store URL with its password hidden, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "(unparsable URL)"


def _first_line(exc: BaseException) -> str:
    message = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {message[0]}" if message else type(exc).__name__


def store_check(engine: AsyncEngine, name: str = "store") -> HealthCheckFn:
    """The store answers a trivial query."""

    async def check() -> HealthCheck:
        try:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception as exc:
            return HealthCheck(name, HealthStatus.FAILING, f"unreachable: {_first_line(exc)}")
        return HealthCheck(name, HealthStatus.OK, "reachable")

    check.__name__ = name
    return check


def migrations_check(engine: AsyncEngine, name: str = "migrations") -> HealthCheckFn:
    """The store's schema is at the newest migration."""

    async def check() -> HealthCheck:
        try:
            state = await schema_state(engine)
        except Exception as exc:
            return HealthCheck(name, HealthStatus.FAILING, f"cannot read schema revision: {_first_line(exc)}")
        data = {"current": state.current, "head": state.head}
        if state.is_current:
            return HealthCheck(name, HealthStatus.OK, f"current (revision {state.head})", data)
        return HealthCheck(
            name,
            HealthStatus.FAILING,
            f"schema at {state.current or 'empty'}, newest is {state.head}: "
            "run `mssante-operator db upgrade`",
            data,
        )

    check.__name__ = name
    return check


# --- certificates -----------------------------------------------------------------------------


def load_certificates(path: Path) -> list[x509.Certificate]:
    """Every certificate in a PEM bundle, a DER `.cer` or a PKCS#7 `.p7b` (PEM or DER).

    Raises ValueError naming the file when it holds no certificate.
    """
    data = path.read_bytes()
    is_pem = b"-----BEGIN" in data
    loaders: list[Callable[[bytes], list[x509.Certificate]]]
    if is_pem:
        loaders = [x509.load_pem_x509_certificates, pkcs7.load_pem_pkcs7_certificates]
    else:
        loaders = [lambda d: [x509.load_der_x509_certificate(d)], pkcs7.load_der_pkcs7_certificates]
    for loader in loaders:
        try:
            certs = loader(data)
        except ValueError:
            continue
        if certs:
            return certs
    raise ValueError(f"{path}: no certificate found (expected PEM, DER .cer or PKCS#7 .p7b)")


@dataclass(frozen=True)
class CertificateExpiry:
    file: str
    subject: str
    not_after: datetime
    days_left: float
    status: HealthStatus

    def as_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "subject": self.subject,
            "not_after": self.not_after.isoformat(),
            "days_left": round(self.days_left, 1),
            "status": self.status.value,
        }


def certificate_expiry(path: Path, warning_days: int, now: datetime | None = None) -> list[CertificateExpiry]:
    """Days left for each certificate in `path`: failing when expired or not yet valid, degraded
    within `warning_days`, else ok."""
    now = now or datetime.now(UTC)
    out: list[CertificateExpiry] = []
    for cert in load_certificates(path):
        not_after = cert.not_valid_after_utc
        days_left = (not_after - now) / timedelta(days=1)
        if days_left <= 0 or cert.not_valid_before_utc > now:
            status = HealthStatus.FAILING
        elif days_left <= warning_days:
            status = HealthStatus.DEGRADED
        else:
            status = HealthStatus.OK
        out.append(CertificateExpiry(str(path), cert.subject.rfc4514_string(), not_after, days_left, status))
    return out


def certificates_check(pki: Callable[[], PkiSettings], name: str = "certificates") -> HealthCheckFn:
    """`pki.server_cert` and every `pki.ca_files` entry: not expired, not expiring within
    `pki.expiry_warning_days`. An unreadable file is failing. `pki` is called on every check so
    that a reloaded configuration is followed."""

    def evaluate() -> HealthCheck:
        settings = pki()
        warning_days = settings.expiry_warning_days
        files = [settings.server_cert, *settings.ca_files]
        entries: list[dict[str, Any]] = []
        statuses: list[HealthStatus] = []
        problems: list[str] = []
        for path in files:
            try:
                expiries = certificate_expiry(path, warning_days)
            except (OSError, ValueError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                entries.append({"file": str(path), "status": "failing", "error": reason})
                statuses.append(HealthStatus.FAILING)
                problems.append(f"{path}: unreadable ({reason})")
                continue
            for item in expiries:
                entries.append(item.as_json())
                statuses.append(item.status)
                if item.status is HealthStatus.FAILING:
                    problems.append(f"{item.subject} ({path}): expired or not yet valid")
                elif item.status is HealthStatus.DEGRADED:
                    problems.append(f"{item.subject} ({path}): expires in {item.days_left:.0f} day(s)")
        status = worst(statuses)
        left = [e["days_left"] for e in entries if "days_left" in e]
        data: dict[str, Any] = {
            "min_days_left": min(left) if left else None,
            "warning_days": warning_days,
            "certificates": entries,
        }
        detail = "; ".join(problems) if problems else f"{len(entries)} certificate(s) valid"
        return HealthCheck(name, status, detail, data)

    async def check() -> HealthCheck:
        return await asyncio.to_thread(evaluate)

    check.__name__ = name
    return check


def age_check(
    name: str,
    last_update: Callable[[], Awaitable[datetime | None]],
    *,
    warn_after: timedelta,
    fail_after: timedelta,
) -> HealthCheckFn:
    """For data refreshed periodically (directory mirror, trust list): degraded when older than
    `warn_after`, failing when older than `fail_after` or never loaded."""

    async def check() -> HealthCheck:
        when = await last_update()
        if when is None:
            return HealthCheck(name, HealthStatus.FAILING, "never loaded")
        age = datetime.now(UTC) - when
        data = {"last_update": when.isoformat(), "age_seconds": int(age.total_seconds())}
        hours = age.total_seconds() / 3600
        if age > fail_after:
            return HealthCheck(name, HealthStatus.FAILING, f"stale: last update {hours:.1f} h ago", data)
        if age > warn_after:
            return HealthCheck(name, HealthStatus.DEGRADED, f"ageing: last update {hours:.1f} h ago", data)
        return HealthCheck(name, HealthStatus.OK, f"last update {hours:.1f} h ago", data)

    check.__name__ = name
    return check
