"""Every refusal reason of CertificateValidator, with real certificates from dev PKIs."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mssante_operator.config.models import PersonIdSource
from mssante_operator.pki.devpki import DevPki
from mssante_operator.pki.identity import IdentityKind
from mssante_operator.pki.loading import load_certificates
from mssante_operator.pki.validation import CertificateValidator, RefusalReason, Usage
from pki_fixtures import (
    PERSON_ID,
    SERVER_HOST,
    STRUCTURE_ID,
    forge_certificate,
    leaf,
    make_dev_pki,
    now,
    validator,
)


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    """A second hierarchy with exactly the same CA names but other keys."""
    return make_dev_pki(tmp_path_factory.mktemp("other-pki"))


@pytest.fixture
def private_pki(tmp_path: Path) -> DevPki:
    """A PKI of the test's own, for revoking CAs or the server certificate."""
    return make_dev_pki(tmp_path / "pki")


# --- accepted ----------------------------------------------------------------------------------------


def test_server_certificate_is_accepted_as_server_and_as_client(dev_pki: DevPki) -> None:
    checker = validator(dev_pki)
    server = leaf(dev_pki.server_cert)
    for usage in (Usage.TLS_SERVER, Usage.TLS_CLIENT):
        result = checker.validate(server, usage=usage)
        assert result.ok, result.detail
        assert result.reason is None
        assert result.identity is not None and result.identity.kind is IdentityKind.SERVER
        assert result.identity.host_names == (SERVER_HOST,)
        assert [c.subject for c in result.chain] == [
            server.subject,
            dev_pki.org_ca.cert.subject,
            dev_pki.root.cert.subject,
        ]


def test_person_and_organisation_certificates_are_accepted(dev_pki: DevPki, tmp_path: Path) -> None:
    checker = validator(dev_pki)
    person, _ = dev_pki.issue_person(PERSON_ID, "Jean", "Martin", tmp_path)
    org, _ = dev_pki.issue_org("Service de cardiologie", STRUCTURE_ID, tmp_path)
    result = checker.validate(leaf(person), usage=Usage.TLS_CLIENT, kinds={IdentityKind.PERSON})
    assert result.ok, result.detail
    assert result.identity is not None and result.identity.national_id == PERSON_ID
    assert "Jean Martin" in result.detail
    result = checker.validate(leaf(org), usage=Usage.TLS_CLIENT, kinds={IdentityKind.ORGANISATION})
    assert result.ok, result.detail
    assert result.identity is not None and result.identity.structure_id == STRUCTURE_ID


def test_intermediates_sent_by_the_peer_complete_the_path(dev_pki: DevPki, tmp_path: Path) -> None:
    only_root = CertificateValidator([dev_pki.root.cert], load_crls_of(dev_pki))
    person, _ = dev_pki.issue_person(PERSON_ID, "Jean", "Martin", tmp_path)
    certs = load_certificates(person)
    assert len(certs) == 2  # the issued file carries its issuing CA
    assert only_root.validate(certs[0], usage=Usage.TLS_CLIENT, intermediates=certs[1:]).ok
    refused = only_root.validate(certs[0], usage=Usage.TLS_CLIENT)
    assert refused.reason is RefusalReason.UNKNOWN_ISSUER
    assert "PERSONNES" in refused.detail


def load_crls_of(pki: DevPki) -> list[x509.CertificateRevocationList]:
    from mssante_operator.pki.loading import load_crls

    return load_crls([], [pki.crl_dir])


# --- refused -----------------------------------------------------------------------------------------


def test_no_certificate(dev_pki: DevPki) -> None:
    result = validator(dev_pki).validate(None, usage=Usage.TLS_CLIENT)
    assert (result.ok, result.reason, result.identity) == (False, RefusalReason.NO_CERTIFICATE, None)
    assert "no client certificate" in result.detail


def test_expired(dev_pki: DevPki, tmp_path: Path) -> None:
    start = now() - timedelta(days=3 * 365)
    path, _ = dev_pki.issue_person(
        PERSON_ID, "Jean", "Martin", tmp_path, not_before=start, not_after=now() - timedelta(days=1)
    )
    result = validator(dev_pki).validate(leaf(path), usage=Usage.TLS_CLIENT)
    assert result.reason is RefusalReason.EXPIRED
    assert "CN=810000000009" in result.detail and "expired on" in result.detail and "renewed" in result.detail
    assert result.identity is not None and result.identity.national_id == PERSON_ID


def test_expired_at_a_later_date(dev_pki: DevPki) -> None:
    server = leaf(dev_pki.server_cert)
    result = validator(dev_pki).validate(
        server, usage=Usage.TLS_SERVER, at=server.not_valid_after_utc + timedelta(seconds=1)
    )
    assert result.reason is RefusalReason.EXPIRED


def test_not_yet_valid(dev_pki: DevPki, tmp_path: Path) -> None:
    path, _ = dev_pki.issue_server(
        "mta.later.test", "LATER", STRUCTURE_ID, tmp_path, not_before=now() + timedelta(days=1)
    )
    result = validator(dev_pki).validate(leaf(path), usage=Usage.TLS_SERVER)
    assert result.reason is RefusalReason.NOT_YET_VALID
    assert "CN=mta.later.test" in result.detail and "not valid before" in result.detail


def test_revoked_after_revoke(dev_pki: DevPki, tmp_path: Path) -> None:
    path, _ = dev_pki.issue_org("Secretariat", STRUCTURE_ID, tmp_path)
    assert validator(dev_pki).validate(leaf(path), usage=Usage.TLS_CLIENT).ok
    dev_pki.revoke(path, reason=x509.ReasonFlags.key_compromise)
    dev_pki.revoke(path)  # idempotent
    result = validator(dev_pki).validate(leaf(path), usage=Usage.TLS_CLIENT)
    assert result.reason is RefusalReason.REVOKED
    assert "CN=Secretariat" in result.detail and "key compromise" in result.detail
    # Revoking one certificate leaves the others alone.
    assert validator(dev_pki).validate(leaf(dev_pki.server_cert), usage=Usage.TLS_SERVER).ok


def test_revoked_intermediate(private_pki: DevPki) -> None:
    private_pki.revoke(private_pki.directory / "org-ca.crt")
    result = validator(private_pki).validate(leaf(private_pki.server_cert), usage=Usage.TLS_SERVER)
    assert result.reason is RefusalReason.REVOKED
    assert "issuing CA certificate" in result.detail and "ORGANISATIONS" in result.detail


def test_unknown_issuer_from_another_hierarchy(dev_pki: DevPki, other_pki: DevPki) -> None:
    result = validator(dev_pki).validate(leaf(other_pki.server_cert), usage=Usage.TLS_SERVER)
    assert result.reason is RefusalReason.UNKNOWN_ISSUER
    assert "another PKI" in result.detail and SERVER_HOST in result.detail


def test_unknown_issuer_with_the_foreign_intermediate_supplied(dev_pki: DevPki, other_pki: DevPki) -> None:
    certs = load_certificates(other_pki.server_cert)
    result = validator(dev_pki).validate(certs[0], usage=Usage.TLS_SERVER, intermediates=certs[1:])
    assert result.reason is RefusalReason.UNKNOWN_ISSUER


def test_unknown_issuer_self_signed(dev_pki: DevPki) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "self.signed.test")])
    cert, _ = forge_certificate(
        issuer_cert=_self_cert(name, key), signing_key=key, subject=name, authority_key=key.public_key()
    )
    result = validator(dev_pki).validate(cert, usage=Usage.TLS_CLIENT)
    assert result.reason is RefusalReason.UNKNOWN_ISSUER
    assert "not one of the configured IGC-Santé CAs" in result.detail


def _self_cert(name: x509.Name, key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    from cryptography.hazmat.primitives import hashes

    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now() - timedelta(days=1))
        .not_valid_after(now() + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


def test_unknown_issuer_when_the_root_is_not_configured(dev_pki: DevPki) -> None:
    intermediates_only = CertificateValidator([dev_pki.org_ca.cert], load_crls_of(dev_pki))
    result = intermediates_only.validate(leaf(dev_pki.server_cert), usage=Usage.TLS_SERVER)
    assert result.reason is RefusalReason.UNKNOWN_ISSUER
    assert "RACINE" in result.detail


def test_bad_signature(dev_pki: DevPki) -> None:
    forged, _ = forge_certificate(
        issuer_cert=dev_pki.org_ca.cert, signing_key=ec.generate_private_key(ec.SECP256R1())
    )
    result = validator(dev_pki).validate(forged, usage=Usage.TLS_CLIENT)
    assert result.reason is RefusalReason.BAD_SIGNATURE
    assert "CN=forged" in result.detail


def test_wrong_key_usage_person_certificate_as_server(dev_pki: DevPki, tmp_path: Path) -> None:
    path, _ = dev_pki.issue_person(PERSON_ID, "Jean", "Martin", tmp_path)
    result = validator(dev_pki).validate(leaf(path), usage=Usage.TLS_SERVER)
    assert result.reason is RefusalReason.WRONG_KEY_USAGE
    assert "serverAuth" in result.detail


def test_wrong_key_usage_server_certificate_as_person_client(dev_pki: DevPki) -> None:
    result = validator(dev_pki).validate(
        leaf(dev_pki.server_cert), usage=Usage.TLS_CLIENT, kinds={IdentityKind.PERSON}
    )
    assert result.reason is RefusalReason.WRONG_KEY_USAGE
    assert "is a server certificate; a person certificate is required" in result.detail


def test_wrong_key_usage_without_client_auth(dev_pki: DevPki, tmp_path: Path) -> None:
    path, _ = dev_pki.issue_org(
        "Signature only", STRUCTURE_ID, tmp_path, eku=[ExtendedKeyUsageOID.EMAIL_PROTECTION]
    )
    result = validator(dev_pki).validate(leaf(path), usage=Usage.TLS_CLIENT)
    assert result.reason is RefusalReason.WRONG_KEY_USAGE
    assert "lacks clientAuth" in result.detail and "emailProtection" in result.detail


def test_wrong_key_usage_ca_certificate_as_leaf(dev_pki: DevPki) -> None:
    result = validator(dev_pki).validate(dev_pki.org_ca.cert, usage=Usage.TLS_CLIENT)
    assert result.reason is RefusalReason.WRONG_KEY_USAGE
    assert "CA certificate" in result.detail


def test_not_a_ca(dev_pki: DevPki) -> None:
    server_cert = leaf(dev_pki.server_cert)
    from cryptography.hazmat.primitives import serialization

    server_key = serialization.load_pem_private_key(dev_pki.server_key.read_bytes(), None)
    assert isinstance(server_key, ec.EllipticCurvePrivateKey)
    child, _ = forge_certificate(issuer_cert=server_cert, signing_key=server_key)
    result = validator(dev_pki).validate(child, usage=Usage.TLS_CLIENT, intermediates=[server_cert])
    assert result.reason is RefusalReason.NOT_A_CA
    assert "is not a CA certificate" in result.detail


def test_no_crl_when_required(dev_pki: DevPki) -> None:
    server = leaf(dev_pki.server_cert)
    strict = CertificateValidator(dev_pki.cas(), [], require_crl=True)
    result = strict.validate(server, usage=Usage.TLS_SERVER)
    assert result.reason is RefusalReason.NO_CRL
    assert "no CRL of CN=TEST AC IGC-SANTE ELEMENTAIRE ORGANISATIONS" in result.detail
    lenient = CertificateValidator(dev_pki.cas(), [], require_crl=False)
    assert lenient.validate(server, usage=Usage.TLS_SERVER).ok


def test_crl_of_another_pki_does_not_count(dev_pki: DevPki, other_pki: DevPki) -> None:
    checker = CertificateValidator(dev_pki.cas(), load_crls_of(other_pki))
    result = checker.validate(leaf(dev_pki.server_cert), usage=Usage.TLS_SERVER)
    assert result.reason is RefusalReason.NO_CRL
    assert "do not verify" in result.detail


def test_crl_expired(dev_pki: DevPki) -> None:
    server = leaf(dev_pki.server_cert)
    later = now() + timedelta(days=60)  # CRLs are valid 30 days, the certificate 3 years
    result = validator(dev_pki).validate(server, usage=Usage.TLS_SERVER, at=later)
    assert result.reason is RefusalReason.CRL_EXPIRED
    assert "download a fresh one" in result.detail
    assert validator(dev_pki, require_crl=False).validate(server, usage=Usage.TLS_SERVER, at=later).ok


def test_invalid_identity_when_the_id_is_not_where_configured(dev_pki: DevPki, tmp_path: Path) -> None:
    path, _ = dev_pki.issue_person(
        PERSON_ID, "Jean", "Martin", tmp_path, id_source=PersonIdSource.SERIAL_NUMBER
    )
    result = validator(dev_pki).validate(leaf(path), usage=Usage.TLS_CLIENT)
    assert result.reason is RefusalReason.INVALID_IDENTITY
    assert "national id in CN" in result.detail and "'Jean Martin'" in result.detail
    ok = validator(dev_pki, person_id_source=PersonIdSource.SERIAL_NUMBER).validate(
        leaf(path), usage=Usage.TLS_CLIENT
    )
    assert ok.ok and ok.identity is not None and ok.identity.national_id == PERSON_ID


def test_unsupported_critical_extension(dev_pki: DevPki) -> None:
    odd = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.2.250.1.999.1"), b"\x05\x00")
    cert, _ = forge_certificate(
        issuer_cert=dev_pki.org_ca.cert, signing_key=dev_pki.org_ca.key, extra_extensions=[(odd, True)]
    )
    result = validator(dev_pki).validate(cert, usage=Usage.TLS_CLIENT)
    assert result.reason is RefusalReason.UNSUPPORTED_CRITICAL_EXTENSION
    assert "1.2.250.1.999.1" in result.detail


def test_oid_person_source_needs_an_oid(dev_pki: DevPki) -> None:
    with pytest.raises(ValueError, match="person_id_oid is not set"):
        CertificateValidator(dev_pki.cas(), [], person_id_source=PersonIdSource.OID)
    with pytest.raises(ValueError, match="not a dotted OID"):
        CertificateValidator(dev_pki.cas(), [], person_id_source=PersonIdSource.OID, person_id_oid="x.y")
