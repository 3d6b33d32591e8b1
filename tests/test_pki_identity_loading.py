"""Identities extracted from issued certificates; loading PEM / DER / PKCS#7 certificates and CRLs."""

from __future__ import annotations

import contextlib
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, pkcs7
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from mssante_operator.config.models import PersonIdSource
from mssante_operator.pki.devpki import DevPki
from mssante_operator.pki.dn import dn_equal
from mssante_operator.pki.identity import IdentityKind, identity_from_certificate
from mssante_operator.pki.loading import PkiLoadError, load_certificates, load_crls, parse_certificates
from pki_fixtures import ADELI_PERSON_ID, PERSON_ID, SERVER_HOST, STRUCTURE_ID, leaf, now

# --- identities ----------------------------------------------------------------------------------


def test_server_identity(dev_pki: DevPki, tmp_path: Path) -> None:
    path, _ = dev_pki.issue_server(
        "SMTP.CHU-Exemple.fr", "CHU EXEMPLE", "1130000011", tmp_path, extra_dns=["mx2.chu-exemple.fr"]
    )
    cert = leaf(path)
    identity = identity_from_certificate(cert)
    assert identity.kind is IdentityKind.SERVER
    assert identity.host_names == ("smtp.chu-exemple.fr", "mx2.chu-exemple.fr")
    assert identity.structure_id == "1130000011"
    assert identity.organisation == "CHU EXEMPLE"
    assert identity.national_id is None
    assert identity.subject_dn == (
        "CN=smtp.chu-exemple.fr,OU=1130000011,O=CHU EXEMPLE,ST=Bouches-du-Rhône (13),C=FR"
    )
    assert identity.subject_rdns[0] == (("CN", "smtp.chu-exemple.fr"),)
    assert identity.issuer_dn.startswith("CN=TEST AC IGC-SANTE ELEMENTAIRE ORGANISATIONS,OU=IGC-SANTE TEST")
    assert identity.serial_number == cert.serial_number and identity.not_after == cert.not_valid_after_utc
    # What the trust list would carry for this operator.
    assert dn_equal(
        "CN=smtp.chu-exemple.fr,OU=1130000011,O=CHU EXEMPLE,ST=Bouches-du-Rhône (13),C=FR", cert.subject
    )


def test_operator_server_identity(dev_pki: DevPki) -> None:
    identity = identity_from_certificate(leaf(dev_pki.server_cert))
    assert identity.kind is IdentityKind.SERVER
    assert identity.common_name == SERVER_HOST and identity.structure_id == STRUCTURE_ID
    assert "ST=Paris (75)" in identity.subject_dn


@pytest.mark.parametrize("national_id", [PERSON_ID, ADELI_PERSON_ID])
def test_person_identity(dev_pki: DevPki, tmp_path: Path, national_id: str) -> None:
    path, _ = dev_pki.issue_person(national_id, "Émilie", "Durand", tmp_path, email="e.durand@x.mssante.fr")
    identity = identity_from_certificate(leaf(path))
    assert identity.kind is IdentityKind.PERSON
    assert identity.national_id == national_id and identity.common_name == national_id
    assert (identity.given_name, identity.surname) == ("Émilie", "Durand")
    assert identity.host_names == ()
    assert "PERSONNES" in identity.issuer_dn


@pytest.mark.parametrize(
    ("source", "oid"), [(PersonIdSource.SERIAL_NUMBER, None), (PersonIdSource.OID, "1.2.250.1.71.4.2.1")]
)
def test_person_id_in_another_attribute(
    dev_pki: DevPki, tmp_path: Path, source: PersonIdSource, oid: str | None
) -> None:
    path, _ = dev_pki.issue_person(PERSON_ID, "Jean", "Martin", tmp_path, id_source=source, id_oid=oid)
    cert = leaf(path)
    assert identity_from_certificate(cert).national_id is None  # default source: CN = "Jean Martin"
    identity = identity_from_certificate(cert, person_id_source=source, person_id_oid=oid)
    assert identity.national_id == PERSON_ID and identity.common_name == "Jean Martin"


def test_organisation_identity(dev_pki: DevPki, tmp_path: Path) -> None:
    path, _ = dev_pki.issue_org("DPI Hopital", "312345678901234", tmp_path, org="CH X")
    identity = identity_from_certificate(leaf(path))
    assert identity.kind is IdentityKind.ORGANISATION
    assert identity.structure_id == "312345678901234"
    assert identity.common_name == "DPI Hopital" and identity.organisation == "CH X"
    assert "ST=" not in identity.subject_dn  # no département for a SIRET-based id


def _foreign(subject: x509.Name, eku: list[x509.ObjectIdentifier] | None) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Some Other CA")]))
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(now())
        .not_valid_after(now() + timedelta(days=1))
    )
    if eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    return builder.sign(key, hashes.SHA256())


def test_kind_rule_for_foreign_issuers() -> None:
    cn = x509.NameAttribute(NameOID.COMMON_NAME, "host.test")
    assert (
        identity_from_certificate(_foreign(x509.Name([cn]), [ExtendedKeyUsageOID.SERVER_AUTH])).kind
        is IdentityKind.SERVER
    )
    person = x509.Name(
        [x509.NameAttribute(NameOID.GIVEN_NAME, "A"), x509.NameAttribute(NameOID.COMMON_NAME, "A B")]
    )
    assert identity_from_certificate(_foreign(person, None)).kind is IdentityKind.PERSON
    by_id = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{PERSON_ID}/Jean Martin")])
    identity = identity_from_certificate(_foreign(by_id, [ExtendedKeyUsageOID.CLIENT_AUTH]))
    assert identity.kind is IdentityKind.PERSON and identity.national_id == PERSON_ID
    assert identity_from_certificate(_foreign(x509.Name([cn]), None)).kind is IdentityKind.ORGANISATION


# --- loading -------------------------------------------------------------------------------------


def test_load_pem_single_and_bundle(dev_pki: DevPki) -> None:
    assert len(load_certificates(dev_pki.directory / "root.crt")) == 1
    bundle = load_certificates(dev_pki.ca_bundle)
    assert [c.subject for c in bundle] == [c.subject for c in dev_pki.cas()]


def test_load_der_and_p7b(dev_pki: DevPki, tmp_path: Path) -> None:
    cas = dev_pki.cas()
    der = tmp_path / "ACR-EL.cer"
    der.write_bytes(cas[0].public_bytes(Encoding.DER))
    assert load_certificates(der) == [cas[0]]
    for encoding, name in ((Encoding.DER, "chain.p7b"), (Encoding.PEM, "chain-pem.p7b")):
        path = tmp_path / name
        path.write_bytes(pkcs7.serialize_certificates(cas, encoding))
        assert sorted(c.serial_number for c in load_certificates(path)) == sorted(
            c.serial_number for c in cas
        )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "file is empty"),
        (b"garbage that is not a certificate", "not a certificate"),
        (b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "no CERTIFICATE or PKCS7 block"),
        (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "malformed PEM CERTIFICATE"),
    ],
)
def test_bad_certificate_files_name_the_file(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.pem"
    path.write_bytes(content)
    with pytest.raises(PkiLoadError, match=message) as info:
        load_certificates(path)
    assert str(path) in str(info.value)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(PkiLoadError, match="certificate file not found"):
        load_certificates(tmp_path / "nope.cer")
    with pytest.raises(PkiLoadError, match="is a directory"):
        load_certificates(tmp_path)
    with pytest.raises(PkiLoadError, match="CRL directory not found"):
        load_crls([], [tmp_path / "crl"])
    with pytest.raises(PkiLoadError, match="CRL file not found"):
        load_crls([tmp_path / "x.crl"], [])


def test_load_crls_der_pem_and_directories(dev_pki: DevPki, tmp_path: Path) -> None:
    der_crls = load_crls([], [dev_pki.crl_dir])
    assert len(der_crls) == 3
    pem = tmp_path / "all.pem"
    pem.write_bytes(b"".join(crl.public_bytes(Encoding.PEM) for crl in der_crls))
    (tmp_path / "README.txt").write_text("ignored: not a .crl or .pem")
    assert len(load_crls([pem], [])) == 3
    assert len(load_crls([dev_pki.crl_path("org-ca")], [tmp_path])) == 4
    bad = tmp_path / "broken.crl"
    bad.write_bytes(b"\x30\x03\x02\x01\x01")
    with pytest.raises(PkiLoadError, match=r"broken\.crl: not a CRL"):
        load_crls([], [tmp_path])


@settings(max_examples=200)
@given(st.binary(max_size=300))
def test_random_bytes_never_crash_the_loader(data: bytes) -> None:
    try:
        parse_certificates(data, "fuzz")
    except PkiLoadError as exc:
        assert str(exc).startswith("fuzz: ")


@given(st.binary(max_size=200))
def test_random_pem_bodies_fail_cleanly(body: bytes) -> None:
    import base64

    data = b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(body) + b"-----END CERTIFICATE-----\n"
    with contextlib.suppress(PkiLoadError):
        parse_certificates(data, "fuzz")
