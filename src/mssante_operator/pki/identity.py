"""What a certificate says about its holder: an operator server, a practitioner or an organisation.

Kind rule (IGC-Santé issues each family from its own CA):
1. issued by a CA whose CN ends with `PERSONNES` → PERSON;
2. otherwise an extended key usage containing serverAuth → SERVER (IGC-Santé SERV / SSL_SERV
   certificates carry serverAuth + clientAuth);
3. otherwise, when the issuer is an `ORGANISATIONS` CA → ORGANISATION;
4. for any other issuer (not IGC-Santé naming): a subject with a given name / surname, or whose
   configured person-id attribute holds a valid national id → PERSON, else ORGANISATION.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

from mssante_operator.config.models import PersonIdSource
from mssante_operator.identifiers import InvalidIdentifier, parse_national_person_id, parse_structure_id
from mssante_operator.pki.dn import RdnSequence, name_to_rdns

__all__ = [
    "CertificateIdentity",
    "IdentityKind",
    "PersonIdSource",
    "format_name",
    "identity_from_certificate",
]


class IdentityKind(StrEnum):
    SERVER = "SERVER"
    PERSON = "PERSON"
    ORGANISATION = "ORGANISATION"


@dataclass(frozen=True)
class CertificateIdentity:
    """The identity the server extracts from a certificate; fields absent from it are None."""

    kind: IdentityKind
    subject_dn: str
    subject_rdns: RdnSequence
    common_name: str | None
    host_names: tuple[str, ...]
    structure_id: str | None
    national_id: str | None
    given_name: str | None
    surname: str | None
    organisation: str | None
    serial_number: int
    not_before: datetime
    not_after: datetime
    issuer_dn: str
    fingerprint_sha256: str

    def describe(self) -> str:
        """A short human label for logs and refusal messages."""
        if self.kind is IdentityKind.PERSON:
            name = " ".join(part for part in (self.given_name, self.surname) if part)
            who = f"national id {self.national_id or '?'}" + (f" ({name})" if name else "")
            return f"personal certificate {who}"
        if self.kind is IdentityKind.SERVER:
            return f"server certificate {self.common_name or self.subject_dn}"
        name = self.common_name or self.subject_dn
        return f"organisation certificate {name} (structure {self.structure_id or '?'})"


# Short names cryptography does not use by default, so DNs read the way people write them.
_NAME_OVERRIDES = {
    NameOID.GIVEN_NAME: "GN",
    NameOID.SURNAME: "SN",
    NameOID.SERIAL_NUMBER: "serialNumber",
    NameOID.EMAIL_ADDRESS: "emailAddress",
    NameOID.ORGANIZATION_IDENTIFIER: "organizationIdentifier",
}


def format_name(name: x509.Name) -> str:
    """RFC 4514 string of a certificate name (CN=...,OU=...,O=...,ST=...,C=FR)."""
    return name.rfc4514_string(_NAME_OVERRIDES)


def _first(name: x509.Name, oid: ObjectIdentifier) -> str | None:
    for attribute in name.get_attributes_for_oid(oid):
        if isinstance(attribute.value, str):
            return attribute.value
    return None


def _all(name: x509.Name, oid: ObjectIdentifier) -> list[str]:
    return [a.value for a in name.get_attributes_for_oid(oid) if isinstance(a.value, str)]


def _national_id(value: str | None) -> str | None:
    """A valid national id from an attribute value; a CN like `810001234567/Jean Martin` is accepted."""
    if value is None:
        return None
    for candidate in (value, value.split("/", 1)[0]):
        try:
            return parse_national_person_id(candidate).value
        except InvalidIdentifier:
            continue
    return None


def _structure_id(name: x509.Name) -> str | None:
    for value in _all(name, NameOID.ORGANIZATIONAL_UNIT_NAME):
        try:
            return parse_structure_id(value).value
        except InvalidIdentifier:
            continue
    return None


def person_id_attribute(name: x509.Name, source: PersonIdSource, oid: str | None) -> tuple[str, str | None]:
    """(label of the attribute, its raw value) where the configuration says the national id is."""
    if source is PersonIdSource.CN:
        return "CN", _first(name, NameOID.COMMON_NAME)
    if source is PersonIdSource.SERIAL_NUMBER:
        return "serialNumber", _first(name, NameOID.SERIAL_NUMBER)
    if not oid:
        raise ValueError("person_id_source is 'oid' but person_id_oid is not set")
    return oid, _first(name, ObjectIdentifier(oid))


def extended_key_usages(cert: x509.Certificate) -> frozenset[ObjectIdentifier] | None:
    """The EKU purposes, or None when the certificate has no EKU extension."""
    try:
        return frozenset(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        return None


def _dns_names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(value) for value in san.get_values_for_type(x509.DNSName)]


def _decide_kind(cert: x509.Certificate, national_id: str | None) -> IdentityKind:
    issuer_cn = (_first(cert.issuer, NameOID.COMMON_NAME) or "").strip().upper()
    if issuer_cn.endswith("PERSONNES"):
        return IdentityKind.PERSON
    ekus = extended_key_usages(cert)
    if ekus is not None and ExtendedKeyUsageOID.SERVER_AUTH in ekus:
        return IdentityKind.SERVER
    if issuer_cn.endswith("ORGANISATIONS"):
        return IdentityKind.ORGANISATION
    has_person_name = bool(_first(cert.subject, NameOID.GIVEN_NAME) or _first(cert.subject, NameOID.SURNAME))
    if has_person_name or national_id is not None:
        return IdentityKind.PERSON
    return IdentityKind.ORGANISATION


def identity_from_certificate(
    cert: x509.Certificate,
    *,
    person_id_source: PersonIdSource = PersonIdSource.CN,
    person_id_oid: str | None = None,
) -> CertificateIdentity:
    """Extract the identity (never raises for odd subjects: what is missing is None)."""
    subject = cert.subject
    common_name = _first(subject, NameOID.COMMON_NAME)
    _, raw_person_id = person_id_attribute(subject, PersonIdSource(person_id_source), person_id_oid)
    national_id = _national_id(raw_person_id)
    kind = _decide_kind(cert, national_id)
    host_names: tuple[str, ...] = ()
    if kind is IdentityKind.SERVER:
        seen: dict[str, None] = {}
        for host in ([common_name] if common_name else []) + _dns_names(cert):
            seen.setdefault(host.strip().lower().rstrip("."), None)
        host_names = tuple(host for host in seen if host)
    return CertificateIdentity(
        kind=kind,
        subject_dn=format_name(subject),
        subject_rdns=name_to_rdns(subject),
        common_name=common_name,
        host_names=host_names,
        structure_id=_structure_id(subject),
        national_id=national_id if kind is IdentityKind.PERSON else None,
        given_name=_first(subject, NameOID.GIVEN_NAME),
        surname=_first(subject, NameOID.SURNAME),
        organisation=_first(subject, NameOID.ORGANIZATION_NAME),
        serial_number=cert.serial_number,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        issuer_dn=format_name(cert.issuer),
        fingerprint_sha256=hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest(),
    )
