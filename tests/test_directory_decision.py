"""The directory's exchange decision: pure function, typed inputs, a code and a reason."""

from __future__ import annotations

import pytest

from mssante_operator.config.models import DirectorySettings
from mssante_operator.directory import (
    Activity,
    DecisionCode,
    DirectoryPolicy,
    MailboxEntry,
    Practitioner,
    RecipientInfo,
    SenderInfo,
    exchange_decision,
)


def activity(active: bool = True) -> Activity:
    return Activity(
        "10", "Médecin", None, None, "S", "Salarié", "1750000018", "CH", None, None, active, "file"
    )


def practitioner(nid: str = "810000000009", active: bool = True) -> Practitioner:
    acts = (activity(),) if active else ()
    return Practitioner(nid, "Docteur", "MARTIN", "Jean", active, acts, ())


def mailbox(
    address: str, type_: str = "PER", nid: str | None = "810000000009", listerouge: bool = False
) -> MailboxEntry:
    return MailboxEntry(
        address,
        type_,
        nid,
        "1750000018",
        None,
        None,
        "MARTIN",
        "Jean",
        None,
        None,
        None,
        "CH",
        listerouge,
        "file",
    )


SENDER = SenderInfo(
    "jean.martin@a.mssante.fr",
    "PER",
    "810000000009",
    practitioner(),
    mailbox("jean.martin@a.mssante.fr"),
)
RECIPIENT = RecipientInfo("paul@b.mssante.fr", mailbox("paul@b.mssante.fr", nid="810000000017"), None)


def test_known_active_sender_to_published_recipient_is_allowed() -> None:
    d = exchange_decision(SENDER, RECIPIENT)
    assert d.allowed and d.code is DecisionCode.OK and d.smtp_status == "2.1.5"
    assert "paul@b.mssante.fr" in d.reason


def test_unknown_sender_practitioner_is_refused() -> None:
    sender = SenderInfo("x@a.mssante.fr", "PER", "810000000017", None, None)
    d = exchange_decision(sender, RECIPIENT)
    assert not d.allowed and d.code is DecisionCode.SENDER_UNKNOWN and d.smtp_status == "5.7.1"
    assert "810000000017" in d.reason
    lenient = DirectoryPolicy(require_known_sender=False)
    assert exchange_decision(sender, RECIPIENT, lenient).allowed


def test_sender_without_current_activity_is_refused() -> None:
    sender = SenderInfo("x@a.mssante.fr", "PER", "810000000009", practitioner(active=False), None)
    d = exchange_decision(sender, RECIPIENT)
    assert not d.allowed and d.code is DecisionCode.SENDER_INACTIVE
    assert exchange_decision(sender, RECIPIENT, DirectoryPolicy(require_active_practitioner=False)).allowed


def test_organisational_sender_needs_no_practitioner() -> None:
    sender = SenderInfo("dpi@a.mssante.fr", "APP", None, None, mailbox("dpi@a.mssante.fr", "APP", None))
    assert exchange_decision(sender, RECIPIENT).allowed


def test_unpublished_recipient_is_refused_unless_local_or_exempt() -> None:
    unknown = RecipientInfo("nobody@b.mssante.fr")
    d = exchange_decision(SENDER, unknown)
    assert not d.allowed and d.code is DecisionCode.RECIPIENT_NOT_PUBLISHED and d.smtp_status == "5.1.1"
    assert "not a published MSSanté mailbox" in d.reason
    local = RecipientInfo("nobody@b.mssante.fr", local=True)
    assert exchange_decision(SENDER, local).code is DecisionCode.RECIPIENT_LOCAL
    patient = RecipientInfo("123456789012345@patient.mssante.fr")
    assert exchange_decision(SENDER, patient).code is DecisionCode.EXEMPT
    lenient = DirectoryPolicy(require_published_recipient=False)
    assert exchange_decision(SENDER, unknown, lenient).allowed


def test_recipient_owned_by_an_inactive_practitioner_is_refused() -> None:
    recipient = RecipientInfo("paul@b.mssante.fr", mailbox("paul@b.mssante.fr"), practitioner(active=False))
    d = exchange_decision(SENDER, recipient)
    assert not d.allowed and d.code is DecisionCode.RECIPIENT_INACTIVE and d.smtp_status == "5.1.6"


def test_liste_rouge_recipient_is_allowed_and_said_so() -> None:
    recipient = RecipientInfo(
        "paul@b.mssante.fr", mailbox("paul@b.mssante.fr", listerouge=True), practitioner()
    )
    d = exchange_decision(SENDER, recipient)
    assert d.allowed and d.code is DecisionCode.RECIPIENT_UNLISTED


@pytest.mark.parametrize("recipient", [RecipientInfo("nobody@b.mssante.fr"), RECIPIENT])
def test_an_unloaded_mirror_defers_instead_of_refusing(recipient: RecipientInfo) -> None:
    d = exchange_decision(SenderInfo("x@a.mssante.fr", "PER", "810000000009"), recipient, mirror_ready=False)
    assert not d.allowed and d.temporary and d.code is DecisionCode.MIRROR_NOT_LOADED


def test_policy_from_settings() -> None:
    policy = DirectoryPolicy.from_settings(
        DirectorySettings(require_known_sender=False, exempt_domains=["Patient.MSSante.fr."])
    )
    assert not policy.require_known_sender and policy.exempt_domains == frozenset({"patient.mssante.fr"})
