"""`pki ...`: inspect certificates as the server sees them, and run the dev PKI (demos and tests)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

import typer
from cryptography import x509

from mssante_operator.cli.common import EXIT_ERROR, console, fail, state
from mssante_operator.config import Settings
from mssante_operator.pki.devpki import (
    DEFAULT_SERVER_ORG,
    DEFAULT_SERVER_STRUCTURE_ID,
    DevPki,
    DevPkiError,
)
from mssante_operator.pki.identity import CertificateIdentity, IdentityKind, format_name
from mssante_operator.pki.loading import PkiLoadError, load_certificates
from mssante_operator.pki.validation import CertificateValidator, Usage, ValidationResult

app = typer.Typer(
    help="IGC-Santé certificates: show what the server extracts, and a dev PKI for demos and tests.",
    no_args_is_help=True,
)

OUT_HELP = "Directory to write <name>.crt (certificate + issuing CA, PEM) and <name>.key into."
DAYS_HELP = "Validity in days (IGC-Santé: 3 years)."


class ShowUsage(StrEnum):
    AUTO = "auto"
    SERVER = "server"
    CLIENT = "client"


class RevokeReason(StrEnum):
    UNSPECIFIED = "unspecified"
    KEY_COMPROMISE = "keyCompromise"
    AFFILIATION_CHANGED = "affiliationChanged"
    SUPERSEDED = "superseded"
    CESSATION_OF_OPERATION = "cessationOfOperation"


def _dev_pki(settings: Settings) -> DevPki:
    directory = settings.pki.dev_ca_dir
    if directory is None:
        fail(
            "pki.dev_ca_dir is not set in the configuration: there is no dev CA to issue from "
            "(production certificates come from ANS / IGC-Santé)"
        )
    try:
        return DevPki.open(directory)
    except DevPkiError as exc:
        fail(str(exc))


def _validity(days: int | None) -> tuple[datetime | None, datetime | None]:
    if days is None:
        return None, None
    if days < 1:
        fail(f"--days must be at least 1, got {days}")
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    return start, start + timedelta(days=days)


def _report_issued(paths: tuple[Path, Path]) -> None:
    cert_path, key_path = paths
    cert = load_certificates(cert_path)[0]
    console.print(f"[green]issued[/] {format_name(cert.subject)}", highlight=False, soft_wrap=True)
    console.print(f"  certificate: {cert_path}", highlight=False, soft_wrap=True)
    console.print(f"  private key: {key_path} (mode 0600)", highlight=False, soft_wrap=True)
    console.print(
        f"  serial {cert.serial_number:x}, valid until {cert.not_valid_after_utc:%Y-%m-%d}", highlight=False
    )


@app.command("init-dev")
def init_dev(
    ctx: typer.Context,
    directory: Path | None = typer.Option(
        None, "--dir", help="Dev PKI directory (default: pki.dev_ca_dir of the configuration)."
    ),
    hostname: str | None = typer.Option(
        None, "--hostname", help="CN of this operator's server certificate (default: instance.hostname)."
    ),
    org: str = typer.Option(DEFAULT_SERVER_ORG, "--org", help="O of the server certificate."),
    structure_id: str = typer.Option(
        DEFAULT_SERVER_STRUCTURE_ID, "--structure-id", help="OU of the server certificate (1+FINESS...)."
    ),
) -> None:
    """Create (or reuse) a TEST IGC-Santé hierarchy, its CRLs and this operator's server certificate.

    Idempotent: an existing hierarchy is kept; the server certificate is re-issued only when missing,
    for another host name, or expiring within 30 days.
    """
    server_cert: Path | None = None
    server_key: Path | None = None
    if directory is None or hostname is None:
        settings = state(ctx).settings()
        hostname = hostname or settings.instance.hostname
        if directory is None:
            if settings.pki.dev_ca_dir is None:
                fail("no --dir given and pki.dev_ca_dir is not set in the configuration")
            directory = settings.pki.dev_ca_dir
            server_cert, server_key = settings.pki.server_cert, settings.pki.server_key
    try:
        pki = DevPki.init(
            directory,
            server_hostname=hostname,
            server_org=org,
            server_structure_id=structure_id,
            server_cert=server_cert,
            server_key=server_key,
        )
    except (DevPkiError, PkiLoadError, OSError) as exc:
        fail(str(exc))
    console.print(f"[green]dev PKI ready[/] in {pki.directory}", highlight=False, soft_wrap=True)
    console.print(f"  CA bundle (root + intermediates): {pki.ca_bundle}", highlight=False, soft_wrap=True)
    console.print(f"  CRLs: {pki.crl_dir}/", highlight=False, soft_wrap=True)
    console.print(
        f"  server certificate for {hostname}: {server_cert or pki.server_cert} "
        f"(key {server_key or pki.server_key})",
        highlight=False,
        soft_wrap=True,
    )


@app.command("issue-server")
def issue_server(
    ctx: typer.Context,
    cn: str = typer.Option(..., "--cn", help="Host name (FQDN) of the MTA; also a DNS subjectAltName."),
    org: str = typer.Option(..., "--org", help="Legal name of the organisation (O)."),
    structure_id: str = typer.Option(..., "--structure-id", help="National structure id (OU): 1+FINESS..."),
    out: Path = typer.Option(..., "--out", help=OUT_HELP),
    name: str | None = typer.Option(None, "--name", help="File name stem (default: the host name)."),
    state_label: str | None = typer.Option(
        None, "--state", help="ST, e.g. 'Paris (75)' (default: from a FINESS structure id)."
    ),
    dns: list[str] = typer.Option([], "--dns", help="Extra DNS subjectAltName (repeatable)."),
    days: int | None = typer.Option(None, "--days", help=DAYS_HELP),
) -> None:
    """Issue an operator server certificate (serverAuth + clientAuth) from the dev ORGANISATIONS CA."""
    pki = _dev_pki(state(ctx).settings())
    not_before, not_after = _validity(days)
    try:
        paths = pki.issue_server(
            cn,
            org,
            structure_id,
            out,
            name=name,
            state=state_label,
            extra_dns=dns,
            not_before=not_before,
            not_after=not_after,
        )
    except (DevPkiError, OSError) as exc:
        fail(str(exc))
    _report_issued(paths)


@app.command("issue-person")
def issue_person(
    ctx: typer.Context,
    national_id: str = typer.Option(..., "--national-id", help="8+RPPS (12 chars) or 0+ADELI (10 chars)."),
    first: str = typer.Option(..., "--first", help="Given name (GN)."),
    last: str = typer.Option(..., "--last", help="Surname (SN)."),
    out: Path = typer.Option(..., "--out", help=OUT_HELP),
    name: str | None = typer.Option(None, "--name", help="File name stem (default: the national id)."),
    email: str | None = typer.Option(None, "--email", help="Mail address as rfc822Name subjectAltName."),
    days: int | None = typer.Option(None, "--days", help=DAYS_HELP),
) -> None:
    """Issue a practitioner's certificate (clientAuth) from the dev PERSONNES CA.

    The national id is placed where pki.person_id_source says (CN by default).
    """
    settings = state(ctx).settings()
    pki = _dev_pki(settings)
    not_before, not_after = _validity(days)
    try:
        paths = pki.issue_person(
            national_id,
            first,
            last,
            out,
            name=name,
            id_source=settings.pki.person_id_source,
            id_oid=settings.pki.person_id_oid,
            email=email,
            not_before=not_before,
            not_after=not_after,
        )
    except (DevPkiError, OSError) as exc:
        fail(str(exc))
    _report_issued(paths)


@app.command("issue-org")
def issue_org(
    ctx: typer.Context,
    cn: str = typer.Option(..., "--cn", help="Name of the organisation service or software (CN)."),
    structure_id: str = typer.Option(..., "--structure-id", help="National structure id (OU): 1+FINESS..."),
    out: Path = typer.Option(..., "--out", help=OUT_HELP),
    org: str | None = typer.Option(None, "--org", help="Legal name (O; default: the CN)."),
    name: str | None = typer.Option(None, "--name", help="File name stem (default: from the CN)."),
    state_label: str | None = typer.Option(None, "--state", help="ST, e.g. 'Paris (75)'."),
    days: int | None = typer.Option(None, "--days", help=DAYS_HELP),
) -> None:
    """Issue an organisation certificate (clientAuth; ORG / APP mailboxes) from the dev ORGANISATIONS CA."""
    pki = _dev_pki(state(ctx).settings())
    not_before, not_after = _validity(days)
    try:
        paths = pki.issue_org(
            cn,
            structure_id,
            out,
            org=org,
            name=name,
            state=state_label,
            not_before=not_before,
            not_after=not_after,
        )
    except (DevPkiError, OSError) as exc:
        fail(str(exc))
    _report_issued(paths)


@app.command("revoke")
def revoke(
    ctx: typer.Context,
    file: Path = typer.Argument(..., help="Certificate file (PEM or DER) issued by the dev PKI."),
    reason: RevokeReason = typer.Option(RevokeReason.UNSPECIFIED, "--reason", help="CRL reason code."),
) -> None:
    """Revoke a certificate of the dev PKI and re-sign its CA's CRL."""
    pki = _dev_pki(state(ctx).settings())
    flag = None if reason is RevokeReason.UNSPECIFIED else x509.ReasonFlags(reason.value)
    try:
        pki.revoke(file, reason=flag)
    except (DevPkiError, OSError) as exc:
        fail(str(exc))
    cert = load_certificates(file)[0]
    console.print(
        f"[green]revoked[/] {format_name(cert.subject)} (serial {cert.serial_number:x}); "
        f"CRL updated in {pki.crl_dir}",
        highlight=False,
        soft_wrap=True,
    )


def _identity_rows(identity: CertificateIdentity) -> list[tuple[str, str]]:
    rows = [
        ("kind", identity.kind.value),
        ("subject", identity.subject_dn),
        ("issuer", identity.issuer_dn),
        ("serial", f"{identity.serial_number:x}"),
        ("valid", f"{identity.not_before:%Y-%m-%d %H:%M} → {identity.not_after:%Y-%m-%d %H:%M} UTC"),
        ("sha256", identity.fingerprint_sha256),
    ]
    optional = [
        ("common name", identity.common_name),
        ("host names", ", ".join(identity.host_names) or None),
        ("structure id", identity.structure_id),
        ("national id", identity.national_id),
        ("given name", identity.given_name),
        ("surname", identity.surname),
        ("organisation", identity.organisation),
    ]
    return rows + [(key, value) for key, value in optional if value]


def _identity_json(identity: CertificateIdentity) -> dict[str, Any]:
    return {
        "kind": identity.kind.value,
        "subject_dn": identity.subject_dn,
        "common_name": identity.common_name,
        "host_names": list(identity.host_names),
        "structure_id": identity.structure_id,
        "national_id": identity.national_id,
        "given_name": identity.given_name,
        "surname": identity.surname,
        "organisation": identity.organisation,
        "serial_number": f"{identity.serial_number:x}",
        "not_before": identity.not_before.isoformat(),
        "not_after": identity.not_after.isoformat(),
        "issuer_dn": identity.issuer_dn,
        "fingerprint_sha256": identity.fingerprint_sha256,
    }


@app.command("show")
def show(
    ctx: typer.Context,
    file: Path = typer.Argument(..., help="Certificate file: PEM, DER (.cer) or PKCS#7 (.p7b)."),
    usage: ShowUsage = typer.Option(
        ShowUsage.AUTO, "--usage", help="Validate as TLS server or client (auto: server certs as server)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Print the identity the server extracts from a certificate and its validation result.

    Validation uses the configured CAs and CRLs (pki.ca_files, pki.crl_files, pki.crl_dirs); further
    certificates in FILE are used as intermediates. Exit status 1 when the certificate would be refused.
    """
    settings = state(ctx).settings()
    try:
        certs = load_certificates(file)
        validator = CertificateValidator.from_settings(settings.pki)
    except (PkiLoadError, ValueError) as exc:
        fail(str(exc))
    leaf = certs[0]
    identity_kind = validator.validate(leaf, usage=Usage.TLS_CLIENT, intermediates=certs[1:]).identity
    if usage is ShowUsage.AUTO:
        chosen = (
            Usage.TLS_SERVER
            if identity_kind is not None and identity_kind.kind is IdentityKind.SERVER
            else Usage.TLS_CLIENT
        )
    else:
        chosen = Usage.TLS_SERVER if usage is ShowUsage.SERVER else Usage.TLS_CLIENT
    result: ValidationResult = validator.validate(leaf, usage=chosen, intermediates=certs[1:])
    if as_json:
        payload = {
            "file": str(file),
            "identity": _identity_json(result.identity) if result.identity else None,
            "validation": {
                "usage": chosen.value,
                "ok": result.ok,
                "reason": result.reason.value if result.reason else None,
                "detail": result.detail,
            },
        }
        console.print_json(json.dumps(payload, ensure_ascii=False))
    else:
        if result.identity is not None:
            for key, value in _identity_rows(result.identity):
                console.print(f"[bold]{key:>13}[/]: {value}", highlight=False, soft_wrap=True)
        verdict = "[green]ACCEPTED[/]" if result.ok else f"[red]REFUSED ({result.reason})[/]"
        console.print(
            f"[bold]{'validation':>13}[/]: {verdict} as TLS {chosen.value[4:]}",
            highlight=False,
            soft_wrap=True,
        )
        console.print(f"{'':>15}{result.detail}", highlight=False, soft_wrap=True)
    if not result.ok:
        raise typer.Exit(EXIT_ERROR)
