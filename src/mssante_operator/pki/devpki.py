"""A development PKI that mirrors IGC-Santé, for demos and tests.

Hierarchy (names as in the TEST range of IGC-Santé):

    TEST AC RACINE IGC-SANTE ELEMENTAIRE                 root.crt / root.key
    ├── TEST AC IGC-SANTE ELEMENTAIRE ORGANISATIONS       org-ca.crt / org-ca.key     (servers, organisations)
    └── TEST AC IGC-SANTE ELEMENTAIRE PERSONNES           person-ca.crt / person-ca.key (practitioners)

Every CA subject is `CN=<name>,OU=IGC-SANTE TEST,OU=0002 187512751,O=ASIP-SANTE,C=FR`. Keys are ECDSA
P-256 (fast to generate, small handshakes; real IGC-Santé certificates are RSA, which the validator and
the TLS contexts accept as well). The directory also holds `ca-bundle.pem` (root + intermediates),
`crl/<ca>.crl` (DER, like ANS's) and `index.json` (issued serials and revocations). Issued files are
PEM: `<name>.crt` (the certificate followed by its issuing CA) and `<name>.key` (PKCS#8, mode 0600).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

from mssante_operator.config.models import PersonIdSource, PkiSettings
from mssante_operator.identifiers import (
    InvalidIdentifier,
    StructureIdKind,
    luhn_check_digit,
    parse_national_person_id,
    parse_structure_id,
)
from mssante_operator.pki.identity import format_name
from mssante_operator.pki.loading import PkiLoadError, load_certificates

__all__ = [
    "CA_FILES",
    "ORG_CA_CN",
    "PERSON_CA_CN",
    "ROOT_CN",
    "DevPki",
    "DevPkiError",
    "department_label",
]

ROOT_CN = "TEST AC RACINE IGC-SANTE ELEMENTAIRE"
ORG_CA_CN = "TEST AC IGC-SANTE ELEMENTAIRE ORGANISATIONS"
PERSON_CA_CN = "TEST AC IGC-SANTE ELEMENTAIRE PERSONNES"
CA_FILES = {"root": ROOT_CN, "org-ca": ORG_CA_CN, "person-ca": PERSON_CA_CN}
CRL_BASE_URL = "http://igc-sante.dev-pki.mssante.test/CRL"

ROOT_VALIDITY = timedelta(days=20 * 365)
CA_VALIDITY = timedelta(days=10 * 365)
LEAF_VALIDITY = timedelta(days=3 * 365)  # IGC-Santé certificates are valid three years
CRL_VALIDITY = timedelta(days=30)
CRL_REFRESH_AFTER = timedelta(days=1)  # `init` re-signs CRLs older than this, like ANS's daily CRLs
SERVER_RENEW_BEFORE = timedelta(days=30)
BACKDATE = timedelta(minutes=5)  # tolerate small clock differences between machines

DEFAULT_SERVER_ORG = "CENTRE HOSPITALIER DE DEMONSTRATION"
DEFAULT_SERVER_STRUCTURE_ID = "1750000018"

_DEPARTMENTS = dict(
    line.split(" ", 1)
    for line in """01 Ain|02 Aisne|03 Allier|04 Alpes-de-Haute-Provence|05 Hautes-Alpes|06 Alpes-Maritimes|
07 Ardèche|08 Ardennes|09 Ariège|10 Aube|11 Aude|12 Aveyron|13 Bouches-du-Rhône|14 Calvados|15 Cantal|
16 Charente|17 Charente-Maritime|18 Cher|19 Corrèze|2A Corse-du-Sud|2B Haute-Corse|21 Côte-d'Or|
22 Côtes-d'Armor|23 Creuse|24 Dordogne|25 Doubs|26 Drôme|27 Eure|28 Eure-et-Loir|29 Finistère|30 Gard|
31 Haute-Garonne|32 Gers|33 Gironde|34 Hérault|35 Ille-et-Vilaine|36 Indre|37 Indre-et-Loire|38 Isère|
39 Jura|40 Landes|41 Loir-et-Cher|42 Loire|43 Haute-Loire|44 Loire-Atlantique|45 Loiret|46 Lot|
47 Lot-et-Garonne|48 Lozère|49 Maine-et-Loire|50 Manche|51 Marne|52 Haute-Marne|53 Mayenne|
54 Meurthe-et-Moselle|55 Meuse|56 Morbihan|57 Moselle|58 Nièvre|59 Nord|60 Oise|61 Orne|62 Pas-de-Calais|
63 Puy-de-Dôme|64 Pyrénées-Atlantiques|65 Hautes-Pyrénées|66 Pyrénées-Orientales|67 Bas-Rhin|68 Haut-Rhin|
69 Rhône|70 Haute-Saône|71 Saône-et-Loire|72 Sarthe|73 Savoie|74 Haute-Savoie|75 Paris|76 Seine-Maritime|
77 Seine-et-Marne|78 Yvelines|79 Deux-Sèvres|80 Somme|81 Tarn|82 Tarn-et-Garonne|83 Var|84 Vaucluse|
85 Vendée|86 Vienne|87 Haute-Vienne|88 Vosges|89 Yonne|90 Territoire de Belfort|91 Essonne|
92 Hauts-de-Seine|93 Seine-Saint-Denis|94 Val-de-Marne|95 Val-d'Oise""".replace("\n", "").split("|")
)

_HOST_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


class DevPkiError(ValueError):
    """The dev PKI cannot do what was asked; the message says why."""


def department_label(structure_id: str) -> str | None:
    """`Paris (75)` for a FINESS-based structure id, as IGC-Santé writes the ST attribute."""
    try:
        parsed = parse_structure_id(structure_id)
    except InvalidIdentifier:
        return None
    if parsed.kind is not StructureIdKind.FINESS:
        return None
    code = parsed.number[:2]
    name = _DEPARTMENTS.get(code)
    return f"{name} ({code})" if name else f"({code})"


def _check_host_name(value: str) -> str:
    host = value.strip().lower().rstrip(".")
    if not host or len(host) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in host.split(".")):
        raise DevPkiError(f"not a valid host name (FQDN): {value!r}")
    return host


def _check_text(value: str, what: str) -> str:
    text = value.strip()
    if not text:
        raise DevPkiError(f"{what} is empty")
    if len(text) > 64:
        raise DevPkiError(f"{what} is longer than 64 characters (X.520 upper bound): {value!r}")
    if any(ord(char) < 0x20 for char in text):
        raise DevPkiError(f"{what} contains control characters: {value!r}")
    return text


def _structure_id(value: str) -> str:
    try:
        return parse_structure_id(value).value
    except InvalidIdentifier as exc:
        raise DevPkiError(f"invalid structure id {value!r}: {exc}") from None


def _national_id(value: str) -> str:
    try:
        return parse_national_person_id(value).value
    except InvalidIdentifier as exc:
        text = value.strip()
        hint = ""
        if len(text) == 12 and text.startswith("8") and text.isascii() and text.isdigit():
            body = text[1:-1]
            hint = f" (8{body}{luhn_check_digit(body)} would be a valid RPPS-based id)"
        raise DevPkiError(f"invalid national id: {exc}{hint}") from None


def _file_name(value: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", value.strip()).strip("-.")
    if not slug:
        raise DevPkiError(f"cannot derive a file name from {value!r}; pass a name")
    return slug


def _ca_subject(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ASIP-SANTE"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "0002 187512751"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "IGC-SANTE TEST"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


@dataclass(frozen=True)
class _Ca:
    name: str  # file stem: root, org-ca, person-ca
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


class DevPki:
    """A dev IGC-Santé look-alike in a directory; see the module docstring for the layout."""

    def __init__(self, directory: Path, root: _Ca, org_ca: _Ca, person_ca: _Ca) -> None:
        self.directory = directory
        self.root = root
        self.org_ca = org_ca
        self.person_ca = person_ca

    # --- paths ---------------------------------------------------------------------------------------

    @property
    def ca_bundle(self) -> Path:
        return self.directory / "ca-bundle.pem"

    @property
    def crl_dir(self) -> Path:
        return self.directory / "crl"

    @property
    def server_cert(self) -> Path:
        return self.directory / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.directory / "server.key"

    @property
    def index_path(self) -> Path:
        return self.directory / "index.json"

    def crl_path(self, ca_name: str) -> Path:
        return self.crl_dir / f"{ca_name}.crl"

    def pki_settings(self, **overrides: Any) -> PkiSettings:
        """Settings that trust this PKI and use its server certificate (handy for tests and demos)."""
        values: dict[str, Any] = {
            "ca_files": [self.ca_bundle],
            "crl_dirs": [self.crl_dir],
            "server_cert": self.server_cert,
            "server_key": self.server_key,
            "dev_ca_dir": self.directory,
        }
        values.update(overrides)
        return PkiSettings(**values)

    def cas(self) -> list[x509.Certificate]:
        return [self.root.cert, self.org_ca.cert, self.person_ca.cert]

    # --- creation / opening --------------------------------------------------------------------------

    @classmethod
    def init(
        cls,
        directory: Path,
        *,
        server_hostname: str,
        server_org: str = DEFAULT_SERVER_ORG,
        server_structure_id: str = DEFAULT_SERVER_STRUCTURE_ID,
        server_cert: Path | None = None,
        server_key: Path | None = None,
    ) -> DevPki:
        """Create the hierarchy (or reuse the one in `directory`) and this operator's server certificate.

        Idempotent: an existing hierarchy is kept, CRLs older than a day are re-signed, and the server
        certificate is re-issued only when missing, for another host name, or expiring within 30 days.
        """
        host = _check_host_name(server_hostname)
        org = _check_text(server_org, "server organisation")
        structure_id = _structure_id(server_structure_id)
        directory.mkdir(parents=True, exist_ok=True)
        with _locked(directory):
            exists = (directory / "root.crt").exists()
            pki = cls.open(directory) if exists else cls._create(directory)
            pki._refresh_crls()
            if not pki.ca_bundle.exists():
                pki._write_bundle()
        cert_path = server_cert or pki.server_cert
        key_path = server_key or pki.server_key
        if not pki._server_cert_current(cert_path, key_path, host):
            pki._issue_server_to(host, org, structure_id, cert_path, key_path)
        return pki

    @classmethod
    def _create(cls, directory: Path) -> DevPki:
        now = _now()
        root_key = ec.generate_private_key(ec.SECP256R1())
        root_subject = _ca_subject(ROOT_CN)
        root_cert = _build_certificate(
            subject=root_subject,
            public_key=root_key.public_key(),
            issuer=None,
            signing_key=root_key,
            not_before=now - BACKDATE,
            not_after=now + ROOT_VALIDITY,
            ca_path_length=1,
        )
        root = _Ca("root", root_cert, root_key)
        intermediates = []
        for name, cn in (("org-ca", ORG_CA_CN), ("person-ca", PERSON_CA_CN)):
            key = ec.generate_private_key(ec.SECP256R1())
            cert = _build_certificate(
                subject=_ca_subject(cn),
                public_key=key.public_key(),
                issuer=root,
                signing_key=root_key,
                not_before=now - BACKDATE,
                not_after=now + CA_VALIDITY,
                ca_path_length=0,
            )
            intermediates.append(_Ca(name, cert, key))
        pki = cls(directory, root, intermediates[0], intermediates[1])
        for ca in (root, *intermediates):
            _write_atomic(directory / f"{ca.name}.key", _key_pem(ca.key), 0o600)
            _write_atomic(directory / f"{ca.name}.crt", _pem(ca.cert))
        pki._write_bundle()
        pki._save_index({"version": 1, "certificates": {}, "crl_numbers": {}})
        for ca in (root, *intermediates):
            pki._write_crl(ca)
        return pki

    @classmethod
    def open(cls, directory: Path) -> DevPki:
        """Open an existing dev PKI; `DevPkiError` if the directory does not hold one."""
        cas: list[_Ca] = []
        for name, cn in CA_FILES.items():
            cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
            if not cert_path.is_file() or not key_path.is_file():
                raise DevPkiError(
                    f"{directory} is not a dev PKI directory ({cert_path.name} or {key_path.name} missing); "
                    "create it with `mssante-operator pki init-dev`"
                )
            try:
                cert = load_certificates(cert_path)[0]
                key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            except (PkiLoadError, ValueError, TypeError) as exc:
                raise DevPkiError(f"{directory}: cannot read {name}: {exc}") from None
            if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
                raise DevPkiError(f"{key_path} does not match {cert_path}")
            if cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value != cn:
                raise DevPkiError(f"{cert_path} is not the {cn} certificate")
            cas.append(_Ca(name, cert, key))
        return cls(directory, cas[0], cas[1], cas[2])

    # --- issuing ---------------------------------------------------------------------------------------

    def issue_server(
        self,
        cn: str,
        org: str,
        structure_id: str,
        out: Path,
        *,
        name: str | None = None,
        state: str | None = None,
        extra_dns: Sequence[str] = (),
        not_before: datetime | None = None,
        not_after: datetime | None = None,
    ) -> tuple[Path, Path]:
        """An operator server certificate (serverAuth + clientAuth), like IGC-Santé's SERV / SSL_SERV."""
        host = _check_host_name(cn)
        stem = _file_name(name or host)
        return self._issue_server_to(
            host,
            _check_text(org, "organisation"),
            _structure_id(structure_id),
            out / f"{stem}.crt",
            out / f"{stem}.key",
            state=state,
            extra_dns=extra_dns,
            not_before=not_before,
            not_after=not_after,
        )

    def _issue_server_to(
        self,
        host: str,
        org: str,
        structure_id: str,
        cert_path: Path,
        key_path: Path,
        *,
        state: str | None = None,
        extra_dns: Sequence[str] = (),
        not_before: datetime | None = None,
        not_after: datetime | None = None,
    ) -> tuple[Path, Path]:
        dns = [host] + [name for name in (_check_host_name(d) for d in extra_dns) if name != host]
        subject = _organisation_subject(host, org, structure_id, state)
        return self._issue(
            self.org_ca,
            subject,
            cert_path,
            key_path,
            eku=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
            san=[x509.DNSName(d) for d in dns],
            not_before=not_before,
            not_after=not_after,
        )

    def issue_person(
        self,
        national_id: str,
        first: str,
        last: str,
        out: Path,
        *,
        name: str | None = None,
        id_source: PersonIdSource = PersonIdSource.CN,
        id_oid: str | None = None,
        email: str | None = None,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
    ) -> tuple[Path, Path]:
        """A practitioner's certificate (clientAuth) from the PERSONNES CA.

        The national id goes where `id_source` says: the CN (default), the serialNumber attribute, or
        the attribute `id_oid`; in the last two cases the CN is "<first> <last>".
        """
        person_id = _national_id(national_id)
        given = _check_text(first, "first name")
        family = _check_text(last, "last name")
        source = PersonIdSource(id_source)
        attributes = [x509.NameAttribute(NameOID.COUNTRY_NAME, "FR")]
        if source is PersonIdSource.SERIAL_NUMBER:
            attributes.append(x509.NameAttribute(NameOID.SERIAL_NUMBER, person_id))
        elif source is PersonIdSource.OID:
            if not id_oid:
                raise DevPkiError("id_source is 'oid' but no OID was given (pki.person_id_oid)")
            try:
                attributes.append(x509.NameAttribute(ObjectIdentifier(id_oid), person_id))
            except ValueError:
                raise DevPkiError(f"not a valid OID: {id_oid!r}") from None
        attributes += [
            x509.NameAttribute(NameOID.SURNAME, family),
            x509.NameAttribute(NameOID.GIVEN_NAME, given),
            x509.NameAttribute(
                NameOID.COMMON_NAME, person_id if source is PersonIdSource.CN else f"{given} {family}"
            ),
        ]
        san: list[x509.GeneralName] = []
        if email is not None:
            if not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", email):
                raise DevPkiError(f"not a mail address: {email!r}")
            san.append(x509.RFC822Name(email))
        stem = _file_name(name or person_id)
        return self._issue(
            self.person_ca,
            x509.Name(attributes),
            out / f"{stem}.crt",
            out / f"{stem}.key",
            eku=[ExtendedKeyUsageOID.CLIENT_AUTH],
            san=san,
            not_before=not_before,
            not_after=not_after,
        )

    def issue_org(
        self,
        cn: str,
        structure_id: str,
        out: Path,
        *,
        org: str | None = None,
        state: str | None = None,
        name: str | None = None,
        eku: Sequence[ObjectIdentifier] | None = None,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
    ) -> tuple[Path, Path]:
        """An organisation certificate (ORG, usage AUTH_CLI: clientAuth) for ORG / APP mailboxes."""
        common_name = _check_text(cn, "organisation certificate name (CN)")
        sid = _structure_id(structure_id)
        organisation = _check_text(org, "organisation") if org is not None else common_name
        stem = _file_name(name or common_name)
        return self._issue(
            self.org_ca,
            _organisation_subject(common_name, organisation, sid, state),
            out / f"{stem}.crt",
            out / f"{stem}.key",
            eku=list(eku) if eku is not None else [ExtendedKeyUsageOID.CLIENT_AUTH],
            san=[],
            not_before=not_before,
            not_after=not_after,
        )

    def _issue(
        self,
        ca: _Ca,
        subject: x509.Name,
        cert_path: Path,
        key_path: Path,
        *,
        eku: Sequence[ObjectIdentifier],
        san: Sequence[x509.GeneralName],
        not_before: datetime | None,
        not_after: datetime | None,
    ) -> tuple[Path, Path]:
        now = _now()
        start = not_before or now - BACKDATE
        end = not_after or start + LEAF_VALIDITY
        if end <= start:
            raise DevPkiError(f"not_after ({end:%Y-%m-%d}) must be after not_before ({start:%Y-%m-%d})")
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _build_certificate(
            subject=subject,
            public_key=key.public_key(),
            issuer=ca,
            signing_key=ca.key,
            not_before=start,
            not_after=end,
            eku=eku,
            san=san,
        )
        with _locked(self.directory):
            index = self._load_index()
            index["certificates"][f"{cert.serial_number:x}"] = {
                "ca": ca.name,
                "subject": format_name(subject),
                "not_after": end.isoformat(),
                "file": str(cert_path.resolve()),
                "revoked_at": None,
                "reason": None,
            }
            self._save_index(index)
        _write_atomic(key_path, _key_pem(key), 0o600)
        _write_atomic(cert_path, _pem(cert) + _pem(ca.cert))
        return cert_path, key_path

    # --- revocation ----------------------------------------------------------------------------------

    def revoke(self, cert_path: Path, *, reason: x509.ReasonFlags | None = None) -> None:
        """Revoke the (first) certificate in `cert_path` and re-sign its CA's CRL. Idempotent."""
        try:
            cert = load_certificates(cert_path)[0]
        except PkiLoadError as exc:
            raise DevPkiError(str(exc)) from None
        ca = self._issuer_of(cert)
        if ca is None:
            raise DevPkiError(
                f"{cert_path}: {format_name(cert.subject)} was not issued by this dev PKI ({self.directory})"
            )
        with _locked(self.directory):
            index = self._load_index()
            entry = index["certificates"].setdefault(
                f"{cert.serial_number:x}",
                {
                    "ca": ca.name,
                    "subject": format_name(cert.subject),
                    "not_after": cert.not_valid_after_utc.isoformat(),
                    "file": str(cert_path.resolve()),
                    "revoked_at": None,
                    "reason": None,
                },
            )
            if entry["revoked_at"] is None:
                entry["revoked_at"] = _now().isoformat()
                entry["reason"] = reason.value if reason is not None else None
                self._save_index(index)
            self._write_crl(ca, index)

    def is_revoked(self, cert: x509.Certificate) -> bool:
        entry = self._load_index()["certificates"].get(f"{cert.serial_number:x}")
        return bool(entry and entry["revoked_at"])

    def _issuer_of(self, cert: x509.Certificate) -> _Ca | None:
        for ca in (self.org_ca, self.person_ca, self.root):
            if cert.issuer != ca.cert.subject:
                continue
            try:
                cert.verify_directly_issued_by(ca.cert)
            except (ValueError, TypeError, InvalidSignature):
                continue
            return ca
        return None

    # --- CRLs, bundle, index -------------------------------------------------------------------------

    def _write_crl(self, ca: _Ca, index: dict[str, Any] | None = None) -> None:
        data = index if index is not None else self._load_index()
        number = int(data.setdefault("crl_numbers", {}).get(ca.name, 0)) + 1
        data["crl_numbers"][ca.name] = number
        now = _now()
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(ca.cert.subject)
            .last_update(now - BACKDATE)
            .next_update(now + CRL_VALIDITY)
            .add_extension(x509.CRLNumber(number), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
            )
        )
        for serial, entry in sorted(data["certificates"].items()):
            if entry["ca"] != ca.name or not entry["revoked_at"]:
                continue
            revoked = (
                x509.RevokedCertificateBuilder()
                .serial_number(int(serial, 16))
                .revocation_date(datetime.fromisoformat(entry["revoked_at"]))
            )
            if entry.get("reason"):
                revoked = revoked.add_extension(
                    x509.CRLReason(x509.ReasonFlags(entry["reason"])), critical=False
                )
            builder = builder.add_revoked_certificate(revoked.build())
        crl = builder.sign(ca.key, hashes.SHA256())
        self._save_index(data)
        _write_atomic(self.crl_path(ca.name), crl.public_bytes(serialization.Encoding.DER))

    def _refresh_crls(self) -> None:
        now = _now()
        for ca in (self.root, self.org_ca, self.person_ca):
            path = self.crl_path(ca.name)
            try:
                crl = x509.load_der_x509_crl(path.read_bytes())
                fresh = now - crl.last_update_utc < CRL_REFRESH_AFTER and crl.issuer == ca.cert.subject
            except (OSError, ValueError):
                fresh = False
            if not fresh:
                self._write_crl(ca)

    def _write_bundle(self) -> None:
        _write_atomic(self.ca_bundle, b"".join(_pem(c) for c in self.cas()))

    def _load_index(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.index_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"version": 1, "certificates": {}, "crl_numbers": {}}
        except (OSError, ValueError) as exc:
            raise DevPkiError(f"{self.index_path}: unreadable index of issued certificates: {exc}") from None
        return data

    def _save_index(self, data: dict[str, Any]) -> None:
        _write_atomic(self.index_path, json.dumps(data, indent=2, sort_keys=True).encode("utf-8"))

    def _server_cert_current(self, cert_path: Path, key_path: Path, host: str) -> bool:
        try:
            cert = load_certificates(cert_path)[0]
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        except (OSError, PkiLoadError, ValueError, TypeError):
            return False
        if key.public_key() != cert.public_key() or self._issuer_of(cert) is not self.org_ca:
            return False
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if not names or str(names[0].value).lower() != host:
            return False
        return cert.not_valid_after_utc - _now() > SERVER_RENEW_BEFORE and not self.is_revoked(cert)


def _organisation_subject(cn: str, org: str, structure_id: str, state: str | None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COUNTRY_NAME, "FR")]
    label = state if state is not None else department_label(structure_id)
    if label:
        attributes.append(x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, _check_text(label, "state")))
    attributes += [
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, structure_id),
        x509.NameAttribute(NameOID.COMMON_NAME, cn),
    ]
    return x509.Name(attributes)


def _build_certificate(
    *,
    subject: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    issuer: _Ca | None,
    signing_key: ec.EllipticCurvePrivateKey,
    not_before: datetime,
    not_after: datetime,
    ca_path_length: int | None = None,
    eku: Sequence[ObjectIdentifier] = (),
    san: Sequence[x509.GeneralName] = (),
) -> x509.Certificate:
    is_ca = ca_path_length is not None
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=ca_path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=not is_ca,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=is_ca,
                crl_sign=is_ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), critical=False
        ).add_extension(
            x509.CRLDistributionPoints(
                [
                    x509.DistributionPoint(
                        full_name=[x509.UniformResourceIdentifier(f"{CRL_BASE_URL}/{issuer.name}.crl")],
                        relative_name=None,
                        reasons=None,
                        crl_issuer=None,
                    )
                ]
            ),
            critical=False,
        )
    if eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(san)), critical=False)
    return builder.sign(signing_key, hashes.SHA256())


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Serialise writers of one PKI directory (parallel CLI runs, test workers)."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
