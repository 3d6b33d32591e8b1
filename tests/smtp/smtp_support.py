"""Support for the SMTP listener tests: a test PKI made with `cryptography`, TEST-ONLY real
implementations of the smtp ports, and a running inbound service on 127.0.0.1 (ephemeral port).

The port implementations here are deliberately small but real (signature and CRL checks with
`cryptography`, fsynced files); production wires the pki/trust/directory/store/audit packages.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mssante_operator.config.models import InstanceSettings, PkiSettings, SmtpInboundSettings
from mssante_operator.config.settings import Settings
from mssante_operator.smtp.inbound import InboundPorts
from mssante_operator.smtp.ports import (
    AuditSink,
    InboundMessage,
    MailboxState,
    MessageSink,
    PeerVerdict,
    SmtpAuditEvent,
    StoreReceipt,
    Verdict,
)
from mssante_operator.smtp.service import InboundSmtpService

NOW = dt.datetime.now(dt.UTC)
SERVER_HOST = "mx.hopital.test"
LOCAL_DOMAIN = "hopital.test"


def _name(cn: str, org: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


@dataclass
class Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    cert_path: Path
    key_path: Path

    @property
    def subject(self) -> str:
        return self.cert.subject.rfc4514_string()


def _write(directory: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Issued:
    cert_path = directory / f"{stem}.crt"
    key_path = directory / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return Issued(cert, key, cert_path, key_path)


def _ca(directory: Path, stem: str, cn: str) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(cn, "TEST IGC-Sante")
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _write(directory, stem, cert, key)


def _leaf(
    directory: Path,
    stem: str,
    ca: Issued,
    cn: str,
    org: str,
    *,
    not_after: dt.datetime | None = None,
    ip: str | None = None,
) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(cn)]
    if ip:
        import ipaddress

        sans.append(x509.IPAddress(ipaddress.ip_address(ip)))
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn, org))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(not_after or NOW + dt.timedelta(days=90))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
        .sign(ca.key, hashes.SHA256())
    )
    return _write(directory, stem, cert, key)


@dataclass
class PkiSet:
    directory: Path
    ca: Issued
    rogue_ca: Issued
    server: Issued
    peer_a: Issued  # bound by the trust list to peer-a.test
    peer_b: Issued  # valid certificate, bound to no domain
    revoked: Issued
    rogue_peer: Issued  # issued by an unknown CA
    expired: Issued  # issued by the right CA, expired yesterday
    crl: x509.CertificateRevocationList

    def server_context(self, client_cert: str = "request") -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.server.cert_path, self.server.key_path)
        context.load_verify_locations(cafile=str(self.ca.cert_path))
        context.verify_mode = ssl.CERT_REQUIRED if client_cert == "require" else ssl.CERT_OPTIONAL
        return context

    def client_context(self, peer: Issued | None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca.cert_path))
        if peer is not None:
            context.load_cert_chain(peer.cert_path, peer.key_path)
        return context


def make_test_pki(directory: Path) -> PkiSet:
    ca = _ca(directory, "ca", "TEST AC IGC-Sante Serveurs")
    rogue_ca = _ca(directory, "rogue-ca", "Rogue CA")
    server = _leaf(directory, "server", ca, SERVER_HOST, "Hopital Test", ip="127.0.0.1")
    peer_a = _leaf(directory, "peer-a", ca, "mx.peer-a.test", "Peer A")
    peer_b = _leaf(directory, "peer-b", ca, "mx.peer-b.test", "Peer B")
    revoked = _leaf(directory, "revoked", ca, "mx.revoked.test", "Peer Revoked")
    rogue_peer = _leaf(directory, "rogue-peer", rogue_ca, "mx.peer-a.test", "Peer A")
    expired = _leaf(
        directory, "expired", ca, "mx.peer-a.test", "Peer A", not_after=NOW - dt.timedelta(hours=12)
    )
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(NOW - dt.timedelta(hours=1))
        .next_update(NOW + dt.timedelta(days=7))
        .add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(revoked.cert.serial_number)
            .revocation_date(NOW - dt.timedelta(minutes=30))
            .build()
        )
        .sign(ca.key, hashes.SHA256())
    )
    return PkiSet(directory, ca, rogue_ca, server, peer_a, peer_b, revoked, rogue_peer, expired, crl)


# -- TEST-ONLY port implementations ----------------------------------------------------------


class CryptoPeerVerifier:
    """Checks the leaf was signed by the test CA, is in its validity period, allows client auth and
    is not on the CRL."""

    def __init__(self, ca: x509.Certificate, crl: x509.CertificateRevocationList) -> None:
        self.ca = ca
        self.crl = crl
        self.calls = 0

    async def verify_peer(self, certificate_der: bytes) -> PeerVerdict:
        self.calls += 1
        leaf = x509.load_der_x509_certificate(certificate_der)
        subject = leaf.subject.rfc4514_string()
        try:
            leaf.verify_directly_issued_by(self.ca)
        except (ValueError, TypeError, Exception):
            return PeerVerdict(False, "not issued by a trusted IGC-Santé CA", subject)
        if not leaf.not_valid_before_utc <= dt.datetime.now(dt.UTC) <= leaf.not_valid_after_utc:
            return PeerVerdict(False, "certificate outside its validity period", subject)
        eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        if ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
            return PeerVerdict(False, "certificate does not allow TLS client authentication", subject)
        revoked = self.crl.get_revoked_certificate_by_serial_number(leaf.serial_number)
        if revoked is not None:
            return PeerVerdict(
                False,
                f"certificate serial {leaf.serial_number:X} revoked on "
                f"{revoked.revocation_date_utc:%Y-%m-%d}",
                subject,
            )
        return PeerVerdict(True, "ok", subject)


def _dn_key(dn: str) -> tuple[tuple[str, str], ...]:
    # Compare by parsed RDNs, not by string (order and spacing vary).
    name = x509.Name.from_rfc4514_string(dn)
    return tuple(sorted((attr.oid.dotted_string, str(attr.value).strip().lower()) for attr in name))


class DictTrustPolicy:
    def __init__(self, bindings: dict[str, list[str]]) -> None:
        self.bindings = {domain: {_dn_key(dn) for dn in dns} for domain, dns in bindings.items()}

    async def inbound_decision(self, peer_subject_dn: str, mail_from_domain: str | None) -> Verdict:
        key = _dn_key(peer_subject_dn)
        if mail_from_domain is None:
            bound = any(key in dns for dns in self.bindings.values())
            return Verdict(bound, "" if bound else "no trust list entry has this certificate subject")
        dns = self.bindings.get(mail_from_domain)
        if dns is None:
            return Verdict(False, f"domain {mail_from_domain} is not in the trust list")
        if key not in dns:
            return Verdict(False, "certificate subject not listed for this domain")
        return Verdict(True)


class DictDirectory:
    def __init__(self, mailboxes: dict[str, MailboxState]) -> None:
        self.mailboxes = mailboxes
        self.refuse_senders: set[str] = set()

    async def mailbox_state(self, address: str) -> MailboxState | None:
        return self.mailboxes.get(address.lower())

    async def exchange_decision(self, sender: str | None, recipient: str) -> Verdict | None:
        if sender is not None and sender in self.refuse_senders:
            return Verdict(False, "sender is not a health professional known to the national directory")
        return None


class FsyncSink:
    """Writes each message and its envelope to a directory, fsyncing files and the directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.fail = False

    async def store(self, message: InboundMessage) -> StoreReceipt:
        if self.fail:
            raise OSError("disk full (test)")
        await asyncio.to_thread(self._write, message)
        return StoreReceipt(message.queue_id)

    def _write(self, message: InboundMessage) -> None:
        envelope = {
            "queue_id": message.queue_id,
            "mail_from": message.mail_from,
            "recipients": [
                {
                    "address": r.address,
                    "notify": r.params.notify_wire(),
                    "orcpt": r.params.orcpt.to_wire() if r.params.orcpt else None,
                }
                for r in message.recipients
            ],
            "ret": message.mail_params.ret.value if message.mail_params.ret else None,
            "envid": message.mail_params.envid,
            "body": message.mail_params.body.value if message.mail_params.body else None,
            "size_param": message.mail_params.size,
            "peer": {"ip": message.peer.ip, "helo": message.peer.helo, "dn": message.peer.subject_dn},
        }
        for name, data in (
            (f"{message.queue_id}.eml", message.raw),
            (f"{message.queue_id}.json", json.dumps(envelope).encode()),
        ):
            tmp = self.directory / (name + ".tmp")
            with open(tmp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.directory / name)
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def messages(self) -> list[tuple[bytes, dict[str, object]]]:
        out = []
        for path in sorted(self.directory.glob("*.eml")):
            envelope = json.loads(path.with_suffix(".json").read_text())
            out.append((path.read_bytes(), envelope))
        return out


@dataclass
class ListAudit:
    path: Path
    events: list[SmtpAuditEvent] = field(default_factory=list)
    durable: list[SmtpAuditEvent] = field(default_factory=list)

    def record(self, event: SmtpAuditEvent) -> None:
        self.events.append(event)

    async def record_durable(self, event: SmtpAuditEvent) -> None:
        line = json.dumps({"event": event.event, "queue_id": event.queue_id, "reason": event.reason}) + "\n"
        await asyncio.to_thread(self._append, line)
        self.events.append(event)
        self.durable.append(event)

    def _append(self, line: str) -> None:
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())

    def refused(self) -> list[SmtpAuditEvent]:
        return [e for e in self.events if e.outcome == "refused"]


@dataclass
class Inbound:
    service: InboundSmtpService
    pki: PkiSet
    sink: FsyncSink
    audit: ListAudit
    directory: DictDirectory
    trust: DictTrustPolicy
    verifier: CryptoPeerVerifier
    settings: Settings

    @property
    def port(self) -> int:
        return self.service.port


def make_settings(pki: PkiSet, **inbound: object) -> Settings:
    base = SmtpInboundSettings(host="127.0.0.1", port=2525, **inbound)  # type: ignore[arg-type]
    return Settings(
        instance=InstanceSettings(hostname=SERVER_HOST),
        pki=PkiSettings(
            server_cert=pki.server.cert_path, server_key=pki.server.key_path, ca_files=[pki.ca.cert_path]
        ),
        # Port 0 (ephemeral) is not a valid configuration value; tests bypass validation for it.
        smtp_inbound=base.model_copy(update={"port": 0}),
    )


async def start_inbound(
    tmp_path: Path,
    pki: PkiSet,
    *,
    sink: MessageSink | None = None,
    audit_sink: AuditSink | None = None,
    **inbound: object,
) -> Inbound:
    settings = make_settings(pki, **inbound)
    store_dir = tmp_path / "store"
    store_dir.mkdir(exist_ok=True)
    files = FsyncSink(store_dir)
    audit = ListAudit(tmp_path / "audit.jsonl")
    directory = DictDirectory(
        {
            f"jean.martin@{LOCAL_DOMAIN}": MailboxState.ACTIVE,
            f"cardiologie@{LOCAL_DOMAIN}": MailboxState.ACTIVE,
            f"suspendu@{LOCAL_DOMAIN}": MailboxState.SUSPENDED,
            f"ferme@{LOCAL_DOMAIN}": MailboxState.CLOSED,
        }
    )
    trust = DictTrustPolicy({"peer-a.test": [pki.peer_a.subject, pki.rogue_peer.subject], "peer-c.test": []})
    verifier = CryptoPeerVerifier(pki.ca.cert, pki.crl)
    ports = InboundPorts(
        peer_verifier=verifier,
        trust=trust,
        directory=directory,
        sink=sink or files,
        audit=audit_sink or audit,
    )
    mode = str(inbound.get("tls_client_certificate", "request"))
    service = InboundSmtpService(settings, ports, lambda s: pki.server_context(mode))
    await service.start()
    return Inbound(service, pki, files, audit, directory, trust, verifier, settings)
