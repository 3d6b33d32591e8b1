"""Chain, usage and revocation checks of a peer certificate against the configured IGC-Santé CAs and CRLs.

Explicit checks rather than cryptography's `x509.verification` verifiers: those have no CRL support,
require a subjectAltName on client certificates (IGC-Santé personal certificates may have none) and
report failures as free text, while every refusal here must map to a `RefusalReason`.

Order of checks (the first failure is reported): path to a configured self-signed root (issuer
known, signatures), validity periods (leaf first), CA constraints of each issuer, critical
extensions, the leaf's key usage / extended key usage / kind, the identity the kind requires, then
revocation of every non-root certificate of the path.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID

from mssante_operator.config.models import PersonIdSource, PkiSettings
from mssante_operator.pki.dn import NormalisedDn, dn_key
from mssante_operator.pki.identity import (
    CertificateIdentity,
    IdentityKind,
    extended_key_usages,
    format_name,
    identity_from_certificate,
    person_id_attribute,
)
from mssante_operator.pki.loading import load_certificates, load_crls

__all__ = ["CertificateValidator", "RefusalReason", "Usage", "ValidationResult"]

MAX_CHAIN_LENGTH = 8
_SIGNATURE_CACHE_SIZE = 4096


class RefusalReason(StrEnum):
    NO_CERTIFICATE = "no_certificate"
    MALFORMED = "malformed"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    UNKNOWN_ISSUER = "unknown_issuer"
    BAD_SIGNATURE = "bad_signature"
    NOT_A_CA = "not_a_ca"
    UNSUPPORTED_CRITICAL_EXTENSION = "unsupported_critical_extension"
    WRONG_KEY_USAGE = "wrong_key_usage"
    INVALID_IDENTITY = "invalid_identity"
    REVOKED = "revoked"
    NO_CRL = "no_crl"
    CRL_EXPIRED = "crl_expired"


class Usage(StrEnum):
    TLS_SERVER = "tls_server"
    TLS_CLIENT = "tls_client"


@dataclass(frozen=True)
class ValidationResult:
    """The verdict; `detail` is for humans (logs, SMTP replies, `pki show`) and names the certificate."""

    ok: bool
    reason: RefusalReason | None
    detail: str
    identity: CertificateIdentity | None
    chain: tuple[x509.Certificate, ...] = ()


class _Refusal(Exception):
    def __init__(self, reason: RefusalReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


_HANDLED_EXTENSIONS = frozenset(
    {
        ExtensionOID.BASIC_CONSTRAINTS,
        ExtensionOID.KEY_USAGE,
        ExtensionOID.EXTENDED_KEY_USAGE,
        ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
        ExtensionOID.ISSUER_ALTERNATIVE_NAME,
        ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
        ExtensionOID.SUBJECT_KEY_IDENTIFIER,
        ExtensionOID.CRL_DISTRIBUTION_POINTS,
        ExtensionOID.AUTHORITY_INFORMATION_ACCESS,
        # Policies are not enforced (any policy is acceptable), which is a valid way to process them.
        ExtensionOID.CERTIFICATE_POLICIES,
        ExtensionOID.POLICY_CONSTRAINTS,
        ExtensionOID.INHIBIT_ANY_POLICY,
    }
)

_REQUIRED_EKU = {
    Usage.TLS_SERVER: ExtendedKeyUsageOID.SERVER_AUTH,
    Usage.TLS_CLIENT: ExtendedKeyUsageOID.CLIENT_AUTH,
}
_ROLE = {Usage.TLS_SERVER: "server", Usage.TLS_CLIENT: "client"}
_EKU_LABEL = {Usage.TLS_SERVER: "serverAuth", Usage.TLS_CLIENT: "clientAuth"}


def _fmt_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """True when `issuer`'s key verifies `cert`'s signature (names are matched by the caller)."""
    key = issuer.public_key()
    signature, data = cert.signature, cert.tbs_certificate_bytes
    hash_algorithm = cert.signature_hash_algorithm
    try:
        if isinstance(key, rsa.RSAPublicKey):
            params = cert.signature_algorithm_parameters
            if not isinstance(params, padding.PSS | padding.PKCS1v15) or hash_algorithm is None:
                return False
            key.verify(signature, data, params, hash_algorithm)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            if hash_algorithm is None:
                return False
            key.verify(signature, data, ec.ECDSA(hash_algorithm))
        elif isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            key.verify(signature, data)
        elif isinstance(key, dsa.DSAPublicKey):
            if hash_algorithm is None:
                return False
            key.verify(signature, data, hash_algorithm)
        else:
            return False
    except (InvalidSignature, UnsupportedAlgorithm, ValueError, TypeError):
        return False
    return True


def _key_identifier(cert: x509.Certificate) -> bytes | None:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        return None


def _authority_key_identifier(cert: x509.Certificate) -> bytes | None:
    try:
        return cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    except x509.ExtensionNotFound:
        return None


def _basic_constraints(cert: x509.Certificate) -> x509.BasicConstraints | None:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return None


def _key_usage(cert: x509.Certificate) -> x509.KeyUsage | None:
    try:
        return cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return None


def _is_self_issued(cert: x509.Certificate) -> bool:
    return dn_key(cert.subject) == dn_key(cert.issuer)


_CRL_REASON_LABEL = {
    x509.ReasonFlags.key_compromise: "key compromise",
    x509.ReasonFlags.ca_compromise: "CA compromise",
    x509.ReasonFlags.affiliation_changed: "affiliation changed",
    x509.ReasonFlags.superseded: "superseded",
    x509.ReasonFlags.cessation_of_operation: "cessation of operation",
    x509.ReasonFlags.certificate_hold: "certificate hold",
    x509.ReasonFlags.privilege_withdrawn: "privilege withdrawn",
    x509.ReasonFlags.aa_compromise: "AA compromise",
}


class CertificateValidator:
    """Validates end-entity certificates against trusted CAs (roots and intermediates) and CRLs.

    Every configured CA is trusted as an intermediate; a path must end at a configured self-signed
    root. Intermediates passed to `validate` (sent by the peer) may complete a path but are not trusted
    by themselves. Build one per configuration (re)load; `validate` is cheap and thread-safe.
    """

    def __init__(
        self,
        cas: Sequence[x509.Certificate],
        crls: Sequence[x509.CertificateRevocationList],
        *,
        require_crl: bool = True,
        person_id_source: PersonIdSource = PersonIdSource.CN,
        person_id_oid: str | None = None,
    ) -> None:
        if PersonIdSource(person_id_source) is PersonIdSource.OID and not person_id_oid:
            raise ValueError("pki.person_id_source is 'oid' but pki.person_id_oid is not set")
        if person_id_oid is not None:
            try:
                x509.ObjectIdentifier(person_id_oid)
            except ValueError:
                raise ValueError(f"pki.person_id_oid is not a dotted OID: {person_id_oid!r}") from None
        self.require_crl = require_crl
        self.person_id_source = PersonIdSource(person_id_source)
        self.person_id_oid = person_id_oid
        unique: dict[bytes, x509.Certificate] = {}
        for cert in cas:
            unique.setdefault(_der(cert), cert)
        self._trusted_der = frozenset(unique)
        self._cas = tuple(unique.values())
        self._by_subject: dict[NormalisedDn, list[x509.Certificate]] = {}
        for cert in self._cas:
            self._by_subject.setdefault(dn_key(cert.subject), []).append(cert)
        self._crls = tuple(crls)
        # Signature checks are the costly part of a validation; their results never change for a
        # given (certificate or CRL, issuer) pair, so remember them (bounded, cleared when full).
        self._signature_cache: dict[tuple[bytes, bytes], bool] = {}
        self._crls_by_issuer: dict[NormalisedDn, list[x509.CertificateRevocationList]] = {}
        for crl in self._crls:
            self._crls_by_issuer.setdefault(dn_key(crl.issuer), []).append(crl)

    @classmethod
    def from_settings(cls, pki: PkiSettings) -> CertificateValidator:
        """Load the configured CA files and CRLs (raises `PkiLoadError` naming a bad file)."""
        cas = [cert for path in pki.ca_files for cert in load_certificates(path)]
        crls = load_crls(pki.crl_files, pki.crl_dirs)
        return cls(
            cas,
            crls,
            require_crl=pki.require_crl,
            person_id_source=pki.person_id_source,
            person_id_oid=pki.person_id_oid,
        )

    @property
    def cas(self) -> tuple[x509.Certificate, ...]:
        return self._cas

    @property
    def crls(self) -> tuple[x509.CertificateRevocationList, ...]:
        return self._crls

    # --- public entry point ------------------------------------------------------------------------

    def validate(
        self,
        leaf: x509.Certificate | None,
        *,
        usage: Usage,
        intermediates: Sequence[x509.Certificate] = (),
        at: datetime | None = None,
        kinds: Collection[IdentityKind] | None = None,
    ) -> ValidationResult:
        """Validate `leaf` for `usage` at `at` (default: now); `kinds` restricts the accepted kinds."""
        if leaf is None:
            return ValidationResult(
                False,
                RefusalReason.NO_CERTIFICATE,
                f"no {_ROLE[usage]} certificate was presented (an IGC-Santé certificate is required)",
                None,
            )
        moment = datetime.now(UTC) if at is None else (at if at.tzinfo else at.replace(tzinfo=UTC))
        try:
            identity = identity_from_certificate(
                leaf, person_id_source=self.person_id_source, person_id_oid=self.person_id_oid
            )
        except ValueError as exc:
            return ValidationResult(False, RefusalReason.MALFORMED, f"unreadable certificate: {exc}", None)
        chain: tuple[x509.Certificate, ...] = ()
        try:
            chain = tuple(self._build_path(leaf, list(intermediates)))
            self._check_validity(chain, moment)
            self._check_issuers(chain)
            self._check_critical_extensions(chain)
            self._check_leaf_usage(leaf, identity, usage, kinds)
            self._check_identity(leaf, identity)
            self._check_revocation(chain, moment)
        except _Refusal as refusal:
            return ValidationResult(False, refusal.reason, refusal.detail, identity, chain)
        except ValueError as exc:  # a malformed extension surfaces when first accessed
            return ValidationResult(
                False,
                RefusalReason.MALFORMED,
                f"{_subject(leaf)}: malformed certificate: {exc}",
                identity,
                chain,
            )
        return ValidationResult(
            True, None, f"{identity.describe()} is valid ({_subject(leaf)})", identity, chain
        )

    # --- path building -----------------------------------------------------------------------------

    def _candidates(self, cert: x509.Certificate, pool: Sequence[x509.Certificate]) -> list[x509.Certificate]:
        wanted = dn_key(cert.issuer)
        found = list(self._by_subject.get(wanted, ()))
        found += [c for c in pool if dn_key(c.subject) == wanted and _der(c) not in self._trusted_der]
        return found

    def _verified(self, signed: bytes, issuer: x509.Certificate, check: Callable[[], bool]) -> bool:
        key = (signed, _der(issuer))
        cached = self._signature_cache.get(key)
        if cached is None:
            if len(self._signature_cache) >= _SIGNATURE_CACHE_SIZE:
                self._signature_cache.clear()
            cached = self._signature_cache[key] = check()
        return cached

    def _cert_signed_by(self, cert: x509.Certificate, issuer: x509.Certificate) -> bool:
        return self._verified(_der(cert), issuer, lambda: _signed_by(cert, issuer))

    def _build_path(self, leaf: x509.Certificate, pool: list[x509.Certificate]) -> list[x509.Certificate]:
        path = [leaf]
        while True:
            current = path[-1]
            if _is_self_issued(current) and self._cert_signed_by(current, current):
                if _der(current) in self._trusted_der:
                    return path
                raise _Refusal(
                    RefusalReason.UNKNOWN_ISSUER,
                    f"{_subject(leaf)}: its chain ends at the root {_subject(current)}, which is not one "
                    "of the configured IGC-Santé CAs (pki.ca_files)",
                )
            if len(path) > MAX_CHAIN_LENGTH:
                raise _Refusal(
                    RefusalReason.UNKNOWN_ISSUER, f"{_subject(leaf)}: certificate chain is too long"
                )
            by_name = [c for c in self._candidates(current, pool) if all(c is not p for p in path)]
            if not by_name:
                what = "its issuer" if current is leaf else f"the issuer of {_subject(current)}"
                raise _Refusal(
                    RefusalReason.UNKNOWN_ISSUER,
                    f"{_subject(leaf)}: {what} {format_name(current.issuer)} is not one of the "
                    "configured IGC-Santé CAs (pki.ca_files)",
                )
            aki = _authority_key_identifier(current)
            by_key = [c for c in by_name if aki is None or _key_identifier(c) in (None, aki)]
            if not by_key:
                raise _Refusal(
                    RefusalReason.UNKNOWN_ISSUER,
                    f"{_subject(leaf)}: a CA named {format_name(current.issuer)} is configured but with a "
                    f"different key (authority key id {aki.hex() if aki else '?'}): the certificate comes "
                    "from another PKI with the same CA names",
                )
            issuer = next((c for c in by_key if self._cert_signed_by(current, c)), None)
            if issuer is None:
                raise _Refusal(
                    RefusalReason.BAD_SIGNATURE,
                    f"{_subject(current)}: signature does not verify with the key of its issuer "
                    f"{format_name(current.issuer)} (forged or corrupted certificate)",
                )
            path.append(issuer)

    # --- checks ------------------------------------------------------------------------------------

    def _check_validity(self, chain: Sequence[x509.Certificate], at: datetime) -> None:
        for index, cert in enumerate(chain):
            role = "certificate" if index == 0 else "issuing CA certificate"
            if at > cert.not_valid_after_utc:
                raise _Refusal(
                    RefusalReason.EXPIRED,
                    f"{role} {_subject(cert)} expired on {_fmt_time(cert.not_valid_after_utc)}"
                    + (": it must be renewed" if index == 0 else ": load the renewed CA chain"),
                )
            if at < cert.not_valid_before_utc:
                raise _Refusal(
                    RefusalReason.NOT_YET_VALID,
                    f"{role} {_subject(cert)} is not valid before {_fmt_time(cert.not_valid_before_utc)} "
                    "(check the clocks)",
                )

    def _check_issuers(self, chain: Sequence[x509.Certificate]) -> None:
        # chain[i + 1] issued chain[i]; count the non-self-issued CAs below each issuer for pathLen.
        for index in range(1, len(chain)):
            issuer = chain[index]
            constraints = _basic_constraints(issuer)
            if constraints is None or not constraints.ca:
                raise _Refusal(
                    RefusalReason.NOT_A_CA,
                    f"{_subject(issuer)} signed {_subject(chain[index - 1])} but is not a CA certificate",
                )
            usage = _key_usage(issuer)
            if usage is not None and not usage.key_cert_sign:
                raise _Refusal(
                    RefusalReason.NOT_A_CA,
                    f"{_subject(issuer)} is not allowed to sign certificates (keyUsage lacks keyCertSign)",
                )
            below = sum(1 for c in chain[1:index] if not _is_self_issued(c))
            if constraints.path_length is not None and below > constraints.path_length:
                raise _Refusal(
                    RefusalReason.NOT_A_CA,
                    f"{_subject(issuer)} allows {constraints.path_length} intermediate CA(s) below it, "
                    f"the chain has {below}",
                )

    def _check_critical_extensions(self, chain: Sequence[x509.Certificate]) -> None:
        for cert in chain:
            for extension in cert.extensions:
                if extension.critical and extension.oid not in _HANDLED_EXTENSIONS:
                    raise _Refusal(
                        RefusalReason.UNSUPPORTED_CRITICAL_EXTENSION,
                        f"{_subject(cert)} has a critical extension this server does not process "
                        f"({extension.oid.dotted_string})",
                    )

    def _check_leaf_usage(
        self,
        leaf: x509.Certificate,
        identity: CertificateIdentity,
        usage: Usage,
        kinds: Collection[IdentityKind] | None,
    ) -> None:
        constraints = _basic_constraints(leaf)
        if constraints is not None and constraints.ca:
            raise _Refusal(
                RefusalReason.WRONG_KEY_USAGE,
                f"{_subject(leaf)} is a CA certificate, not an end-entity certificate",
            )
        key_usage = _key_usage(leaf)
        if key_usage is not None and not key_usage.digital_signature:
            raise _Refusal(
                RefusalReason.WRONG_KEY_USAGE,
                f"{_subject(leaf)}: keyUsage lacks digitalSignature, required for TLS with ECDHE",
            )
        ekus = extended_key_usages(leaf)
        required = _REQUIRED_EKU[usage]
        if (
            ekus is not None
            and required not in ekus
            and ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE not in ekus
        ):
            present = ", ".join(sorted(getattr(e, "_name", e.dotted_string) for e in ekus)) or "none"
            raise _Refusal(
                RefusalReason.WRONG_KEY_USAGE,
                f"{_subject(leaf)}: extended key usage lacks {_EKU_LABEL[usage]} (has: {present}); "
                f"it cannot be used as a TLS {_ROLE[usage]} certificate",
            )
        if kinds is not None and identity.kind not in kinds:
            wanted = " or ".join(sorted(kind.value.lower() for kind in kinds))
            raise _Refusal(
                RefusalReason.WRONG_KEY_USAGE,
                f"{_subject(leaf)} is a {identity.kind.value.lower()} certificate; a {wanted} certificate "
                "is required here",
            )

    def _check_identity(self, leaf: x509.Certificate, identity: CertificateIdentity) -> None:
        if identity.kind is IdentityKind.PERSON and identity.national_id is None:
            label, raw = person_id_attribute(leaf.subject, self.person_id_source, self.person_id_oid)
            raise _Refusal(
                RefusalReason.INVALID_IDENTITY,
                f"{_subject(leaf)}: personal certificate without a valid national id in {label} "
                f"(found {raw!r}; expected 8+RPPS or 0+ADELI; see pki.person_id_source)",
            )
        if identity.kind is IdentityKind.ORGANISATION and identity.structure_id is None:
            raise _Refusal(
                RefusalReason.INVALID_IDENTITY,
                f"{_subject(leaf)}: organisation certificate without a valid structure id in OU "
                "(expected 1+FINESS, 3+SIRET or 4+practice id)",
            )
        if identity.kind is IdentityKind.SERVER and not identity.host_names:
            raise _Refusal(
                RefusalReason.INVALID_IDENTITY, f"{_subject(leaf)}: server certificate without a host name"
            )

    def _issuer_crl(
        self, cert: x509.Certificate, issuer: x509.Certificate
    ) -> tuple[x509.CertificateRevocationList | None, str]:
        named = self._crls_by_issuer.get(dn_key(issuer.subject), [])
        usage = _key_usage(issuer)
        if usage is not None and not usage.crl_sign:
            return None, f"{_subject(issuer)} is not allowed to sign CRLs (keyUsage lacks cRLSign)"
        valid = [
            crl
            for crl in named
            if self._verified(
                crl.tbs_certlist_bytes + crl.signature,
                issuer,
                functools.partial(_crl_signed_by, crl, issuer),
            )
        ]
        if not valid:
            if named:
                return None, (
                    f"the CRL(s) loaded for {_subject(issuer)} do not verify with its key "
                    "(a CRL of another PKI with the same CA name?)"
                )
            return None, f"no CRL of {_subject(issuer)} is loaded (pki.crl_files / pki.crl_dirs)"
        return max(valid, key=lambda crl: crl.last_update_utc), ""

    def _check_revocation(self, chain: Sequence[x509.Certificate], at: datetime) -> None:
        for index in range(len(chain) - 1):
            cert, issuer = chain[index], chain[index + 1]
            crl, problem = self._issuer_crl(cert, issuer)
            if crl is None:
                if self.require_crl:
                    raise _Refusal(
                        RefusalReason.NO_CRL,
                        f"cannot check whether {_subject(cert)} is revoked: {problem}",
                    )
                continue
            entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
            if entry is not None:
                why = ""
                try:
                    flag = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
                    why = f" ({_CRL_REASON_LABEL.get(flag, flag.value)})"
                except x509.ExtensionNotFound:
                    pass
                role = "certificate" if index == 0 else "issuing CA certificate"
                raise _Refusal(
                    RefusalReason.REVOKED,
                    f"{role} {_subject(cert)} (serial {cert.serial_number:x}) was revoked on "
                    f"{_fmt_time(entry.revocation_date_utc)}{why}",
                )
            next_update = crl.next_update_utc
            if next_update is not None and at > next_update and self.require_crl:
                raise _Refusal(
                    RefusalReason.CRL_EXPIRED,
                    f"the CRL of {_subject(issuer)} expired on {_fmt_time(next_update)}: download a fresh "
                    "one from the distribution point named in the certificates",
                )


def _crl_signed_by(crl: x509.CertificateRevocationList, issuer: x509.Certificate) -> bool:
    try:
        return bool(crl.is_signature_valid(issuer.public_key()))  # type: ignore[arg-type]
    except (TypeError, ValueError, UnsupportedAlgorithm):
        return False


def _subject(cert: x509.Certificate) -> str:
    return format_name(cert.subject) or "(empty subject)"
