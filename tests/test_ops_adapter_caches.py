"""The inbound adapters' short-lived memories: active mailboxes (RCPT) and client-certificate
verdicts (per connection). What is remembered, for how long, and what never is."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mssante_operator.ops.adapters import PkiPeerVerifier, StoreRecipients
from mssante_operator.pki import RefusalReason
from mssante_operator.pki.validation import ValidationResult
from mssante_operator.smtp.ports import MailboxState
from mssante_operator.store.models import MailboxStatus


class CountingStore:
    def __init__(self, states: dict[str, MailboxStatus]) -> None:
        self.states = states
        self.calls: list[str] = []

    async def mailbox_status(self, address: str) -> MailboxStatus | None:
        self.calls.append(address)
        await asyncio.sleep(0.01)
        return self.states.get(address)


async def test_active_mailboxes_are_remembered_briefly_and_looked_up_once() -> None:
    store = CountingStore({"a@h.test": MailboxStatus.ACTIVE, "s@h.test": MailboxStatus.SUSPENDED})
    recipients = StoreRecipients(store, active_ttl=0.3)  # type: ignore[arg-type]
    states = await asyncio.gather(*(recipients.mailbox_state("a@h.test") for _ in range(20)))
    assert states == [MailboxState.ACTIVE] * 20 and store.calls == ["a@h.test"]
    assert await recipients.mailbox_state("A@h.test") is MailboxState.ACTIVE
    assert len(store.calls) == 1
    # Never remembered: suspended and unknown addresses are asked for every time.
    for _ in range(2):
        assert await recipients.mailbox_state("s@h.test") is MailboxState.SUSPENDED
        assert await recipients.mailbox_state("new@h.test") is None
    assert len(store.calls) == 5
    # A suspension is seen once the entry has expired.
    store.states["a@h.test"] = MailboxStatus.SUSPENDED
    await asyncio.sleep(0.35)
    assert await recipients.mailbox_state("a@h.test") is MailboxState.SUSPENDED
    assert await recipients.mailbox_state("a@h.test") is MailboxState.SUSPENDED
    assert store.calls.count("a@h.test") == 3


def _certificate_der() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mx.peer.test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.DER)


class CountingValidator:
    def __init__(self, reason: RefusalReason | None) -> None:
        self.reason = reason
        self.calls = 0

    def validate(self, cert: x509.Certificate, **kw: Any) -> ValidationResult:
        self.calls += 1
        ok = self.reason is None
        return ValidationResult(ok, self.reason, "ok" if ok else "refused", None)


async def test_certificate_verdicts_are_reused_by_the_same_validator_only() -> None:
    der = _certificate_der()
    current = CountingValidator(None)
    verifier = PkiPeerVerifier(lambda: current, ttl=60)  # type: ignore[arg-type,return-value]
    first = await verifier.verify_peer(der)
    assert first.ok and (await verifier.verify_peer(der)) == first and current.calls == 1
    # A reload (SIGHUP: new CA files or CRLs) builds a new validator: asked again.
    current = CountingValidator(RefusalReason.REVOKED)
    assert not (await verifier.verify_peer(der)).ok and current.calls == 1
    # A temporary failure (no CRL) is never reused.
    current = CountingValidator(RefusalReason.NO_CRL)
    for _ in range(2):
        verdict = await verifier.verify_peer(der)
        assert not verdict.ok and verdict.temporary
    assert current.calls == 2
