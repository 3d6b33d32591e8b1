"""Expiry of the configured certificates and CRLs, for /healthz and `pki show`-style reports."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from mssante_operator.config.models import PkiSettings
from mssante_operator.pki.identity import format_name
from mssante_operator.pki.loading import CRL_SUFFIXES, load_certificates, parse_crls


@dataclass(frozen=True)
class ExpiryStatus:
    """One certificate or CRL: what it is, when it stops being usable, and whether that is soon."""

    path: Path
    what: str  # "server certificate", "CA certificate", "CRL"
    subject: str
    expires: datetime
    expired: bool
    expiring: bool  # within pki.expiry_warning_days (CRLs: already past their next update)

    def describe(self) -> str:
        state = "EXPIRED" if self.expired else ("expires soon" if self.expiring else "ok")
        return f"{self.what} {self.subject} ({self.path}): {state}, until {self.expires:%Y-%m-%d %H:%M} UTC"


def expiry_report(pki: PkiSettings, *, at: datetime | None = None) -> list[ExpiryStatus]:
    """The server certificate, each CA and each CRL with its end date (raises `PkiLoadError`).

    Certificates are "expiring" within `pki.expiry_warning_days`; a CRL is "expired" once past its
    next update (a fresh one must be fetched daily), never merely "expiring".
    """
    now = at or datetime.now(UTC)
    horizon = now + timedelta(days=pki.expiry_warning_days)
    report: list[ExpiryStatus] = []

    def add_cert(path: Path, what: str) -> None:
        for cert in load_certificates(path)[: 1 if what == "server certificate" else None]:
            end = cert.not_valid_after_utc
            report.append(
                ExpiryStatus(path, what, format_name(cert.subject), end, end <= now, end <= horizon)
            )

    add_cert(pki.server_cert, "server certificate")
    for path in pki.ca_files:
        add_cert(path, "CA certificate")
    crl_paths = list(pki.crl_files)
    for directory in pki.crl_dirs:
        if directory.is_dir():
            crl_paths += sorted(
                p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in CRL_SUFFIXES
            )
    for path in crl_paths:
        try:
            data = path.read_bytes()
        except OSError:
            continue
        for crl in parse_crls(data, str(path)):
            end = crl.next_update_utc
            if end is not None:
                report.append(ExpiryStatus(path, "CRL", format_name(crl.issuer), end, end <= now, end <= now))
    return report
