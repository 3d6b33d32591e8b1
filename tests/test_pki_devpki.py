"""The dev PKI: layout mirroring IGC-Santé, idempotent init, issuing and revocation bookkeeping."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509

from mssante_operator.pki.devpki import (
    ORG_CA_CN,
    PERSON_CA_CN,
    ROOT_CN,
    DevPki,
    DevPkiError,
    department_label,
)
from mssante_operator.pki.identity import format_name
from mssante_operator.pki.loading import load_certificates, load_crls
from pki_fixtures import PERSON_ID, SERVER_HOST, STRUCTURE_ID, leaf, make_dev_pki


def test_hierarchy_mirrors_igc_sante(dev_pki: DevPki) -> None:
    assert format_name(dev_pki.root.cert.subject) == (
        f"CN={ROOT_CN},OU=IGC-SANTE TEST,OU=0002 187512751,O=ASIP-SANTE,C=FR"
    )
    assert format_name(dev_pki.org_ca.cert.issuer) == format_name(dev_pki.root.cert.subject)
    assert dev_pki.org_ca.cert.subject.rfc4514_string().startswith(f"CN={ORG_CA_CN},OU=IGC-SANTE TEST")
    assert dev_pki.person_ca.cert.subject.rfc4514_string().startswith(f"CN={PERSON_CA_CN},")
    assert load_certificates(dev_pki.ca_bundle) == dev_pki.cas()
    assert {p.name for p in dev_pki.crl_dir.iterdir()} == {"root.crl", "org-ca.crl", "person-ca.crl"}
    for name in ("root", "org-ca", "person-ca", "server"):
        assert (dev_pki.directory / f"{name}.key").stat().st_mode & 0o077 == 0


def test_certificates_name_their_crl_distribution_point(dev_pki: DevPki, tmp_path: Path) -> None:
    person, _ = dev_pki.issue_person(PERSON_ID, "Jean", "Martin", tmp_path)
    for cert, ca_name in (
        (leaf(dev_pki.server_cert), "org-ca"),
        (leaf(person), "person-ca"),
        (dev_pki.org_ca.cert, "root"),
    ):
        points = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
        uris = [name.value for point in points for name in (point.full_name or [])]
        assert uris and uris[0].endswith(f"/CRL/{ca_name}.crl")
        assert dev_pki.crl_path(ca_name).exists()


def test_init_is_idempotent(tmp_path: Path) -> None:
    first = make_dev_pki(tmp_path)
    server = leaf(first.server_cert)
    crls = {p.name: p.read_bytes() for p in first.crl_dir.iterdir()}
    again = make_dev_pki(tmp_path)
    assert again.root.cert == first.root.cert and again.org_ca.cert == first.org_ca.cert
    assert leaf(again.server_cert) == server
    assert {p.name: p.read_bytes() for p in again.crl_dir.iterdir()} == crls  # fresh CRLs are kept
    renamed = DevPki.init(tmp_path, server_hostname="new.hopital.test")
    assert renamed.root.cert == first.root.cert
    assert leaf(renamed.server_cert).subject != server.subject  # another host name: re-issued


def test_init_reissues_a_revoked_server_certificate(tmp_path: Path) -> None:
    pki = make_dev_pki(tmp_path)
    old = leaf(pki.server_cert)
    pki.revoke(pki.server_cert)
    assert leaf(make_dev_pki(tmp_path).server_cert) != old


def test_revocation_is_recorded_in_the_crl(tmp_path: Path) -> None:
    pki = make_dev_pki(tmp_path / "pki")
    path, _ = pki.issue_org("Org", STRUCTURE_ID, tmp_path)
    cert = leaf(path)
    pki.revoke(path, reason=x509.ReasonFlags.superseded)
    assert pki.is_revoked(cert)
    crl = x509.load_der_x509_crl(pki.crl_path("org-ca").read_bytes())
    entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
    assert entry is not None
    assert (
        entry.extensions.get_extension_for_class(x509.CRLReason).value.reason is x509.ReasonFlags.superseded
    )
    assert crl.is_signature_valid(pki.org_ca.key.public_key())
    number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    pki.revoke(path)
    crl2 = x509.load_der_x509_crl(pki.crl_path("org-ca").read_bytes())
    assert crl2.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == number + 1
    assert len(load_crls([], [pki.crl_dir])) == 3


def test_open_errors(tmp_path: Path, dev_pki: DevPki) -> None:
    with pytest.raises(DevPkiError, match="not a dev PKI directory"):
        DevPki.open(tmp_path)
    with pytest.raises(DevPkiError, match="was not issued by this dev PKI"):
        make_dev_pki(tmp_path / "other").revoke(dev_pki.server_cert)
    with pytest.raises(DevPkiError, match="certificate file not found"):
        dev_pki.revoke(tmp_path / "nope.crt")


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda p, o: p.issue_server("bad host", "X", STRUCTURE_ID, o), "not a valid host name"),
        (lambda p, o: p.issue_server("a.test", "", STRUCTURE_ID, o), "organisation is empty"),
        (lambda p, o: p.issue_server("a.test", "X", "1", o), "invalid structure id"),
        (lambda p, o: p.issue_person("81", "A", "B", o), "invalid national id"),
        (lambda p, o: p.issue_person(PERSON_ID, "A", "B", o, email="nope"), "not a mail address"),
        (lambda p, o: p.issue_org("X" * 65, STRUCTURE_ID, o), "longer than 64"),
        (lambda p, o: p.issue_org("X", "4", o), "practice structure id"),
    ],
)
def test_bad_input(dev_pki: DevPki, tmp_path: Path, call, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(DevPkiError, match=message):
        call(dev_pki, tmp_path)
    assert not list(tmp_path.iterdir())  # nothing written


def test_department_labels() -> None:
    assert department_label("1750000018") == "Paris (75)"
    assert department_label("12A0000018") == "Corse-du-Sud (2A)"
    assert department_label("312345678901234") is None
    assert SERVER_HOST


def test_expiry_report(dev_pki: DevPki) -> None:
    from datetime import timedelta

    from mssante_operator.pki.health import expiry_report

    report = expiry_report(dev_pki.pki_settings())
    kinds = sorted(status.what for status in report)
    assert kinds == ["CA certificate"] * 3 + ["CRL"] * 3 + ["server certificate"]
    assert not any(status.expiring or status.expired for status in report)
    server = next(s for s in report if s.what == "server certificate")
    soon = expiry_report(dev_pki.pki_settings(), at=server.expires - timedelta(days=10))
    flagged = {s.what for s in soon if s.expiring}
    assert "server certificate" in flagged and "CRL" in flagged
    assert "expires soon" in next(s for s in soon if s.what == "server certificate").describe()
