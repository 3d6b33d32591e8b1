"""Small hand-written extraction files for the directory tests (real headers, a few lines)."""

from __future__ import annotations

from pathlib import Path

from mssante_operator.directory.sample import ACTIVITY_HEADER, MAILBOX_HEADER
from mssante_operator.identifiers import luhn_check_digit


def rpps(body: str) -> str:
    """An 11-digit RPPS with its check digit, from 10 digits."""
    return body + luhn_check_digit(body)


def activity_line(
    rpps_number: str,
    last: str,
    first: str,
    *,
    profession: tuple[str, str] = ("10", "Médecin"),
    finess: str = "750000018",
    siret: str = "",
    id_type: str = "8",
    national_id: str | None = None,
    specialty: str = "Cardiologie et maladies vasculaires",
    city: str = "PARIS",
) -> str:
    values = dict.fromkeys(ACTIVITY_HEADER, "")
    values.update(
        {
            "Type d'identifiant PP": id_type,
            "Identifiant PP": rpps_number,
            "Identification nationale PP": national_id if national_id is not None else id_type + rpps_number,
            "Libellé civilité d'exercice": "Docteur",
            "Nom d'exercice": last,
            "Prénom d'exercice": first,
            "Code profession": profession[0],
            "Libellé profession": profession[1],
            "Code savoir-faire": "SM04",
            "Libellé savoir-faire": specialty,
            "Code mode exercice": "S",
            "Libellé mode exercice": "Salarié",
            "Numéro FINESS site": finess,
            "Numéro SIRET site": siret,
            "Raison sociale site": "CENTRE HOSPITALIER DE TEST",
            "Code postal (coord. structure)": "75013",
            "Libellé commune (coord. structure)": city,
        }
    )
    return "|".join(values[h] for h in ACTIVITY_HEADER) + "|"


def mailbox_line(
    bal_type: str,
    address: str,
    *,
    national_id: str = "",
    structure: str = "",
    structure_type: str = "1",
    last: str = "",
    first: str = "",
    service: str = "",
) -> str:
    values = dict.fromkeys(MAILBOX_HEADER, "")
    values.update(
        {
            "Type de BAL": bal_type,
            "Adresse BAL": address,
            "Type Identifiant PP": national_id[:1],
            "Identifiant PP": national_id[1:],
            "Identification nationale PP": national_id,
            "Type identifiant structure": structure_type if structure else "",
            "Identification Structure": structure,
            "Service de rattachement": service,
            "Nom d'exercice": last,
            "Prénom d'exercice": first,
            "Raison Sociale structure BAL": "CENTRE HOSPITALIER DE TEST",
        }
    )
    return "|".join(values[h] for h in MAILBOX_HEADER) + "|"


ACTIVITY_HEADER_LINE = "|".join(ACTIVITY_HEADER) + "|"
MAILBOX_HEADER_LINE = "|".join(MAILBOX_HEADER) + "|"

DR_MARTIN = rpps("1000000000")  # national id 8 + this
DR_LEFEVRE = rpps("1000000001")
DR_NGUYEN = rpps("1000000002")


def write_activity(path: Path, lines: list[str], header: str = ACTIVITY_HEADER_LINE) -> Path:
    path.write_text("\n".join([header, *lines]) + "\n", encoding="utf-8")
    return path


def write_mailboxes(path: Path, lines: list[str], header: str = MAILBOX_HEADER_LINE) -> Path:
    path.write_text("\n".join([header, *lines]) + "\n", encoding="utf-8")
    return path


def base_files(directory: Path, stamp: str = "202611010000") -> tuple[Path, Path]:
    """Three practitioners, four mailboxes (one duplicated line), one structure."""
    directory.mkdir(parents=True, exist_ok=True)
    activity = write_activity(
        directory / f"PS_LibreAcces_Personne_activite_{stamp}.txt",
        [
            activity_line(DR_MARTIN, "MARTIN", "Jean"),
            activity_line(DR_MARTIN, "MARTIN", "Jean", finess="", siret="12345678901234"),
            activity_line(DR_LEFEVRE, "LEFÈVRE", "Hélène", profession=("60", "Infirmier")),
            activity_line("751234567", "NGUYEN", "Zoé", id_type="0", profession=("91", "Orthophoniste")),
        ],
    )
    mailboxes = write_mailboxes(
        directory / f"Extraction_Correspondance_MSSante_{stamp}.txt",
        [
            mailbox_line("PER", "jean.martin@hopital-demo.mssante.test", national_id="8" + DR_MARTIN,
                         structure="750000018", last="MARTIN", first="Jean"),
            mailbox_line("PER", "jean.martin@hopital-demo.mssante.test", national_id="8" + DR_MARTIN,
                         structure="750000018", last="MARTIN", first="Jean"),
            mailbox_line("PER", "helene.lefevre@infirmier.mssante.fr", national_id="8" + DR_LEFEVRE,
                         last="LEFÈVRE", first="Hélène"),
            mailbox_line("ORG", "cardiologie@hopital-demo.mssante.test", structure="750000018",
                         service="Cardiologie"),
            mailbox_line("PER", "ancien.medecin@medecin.mssante.fr", national_id="8" + DR_NGUYEN,
                         last="ANCIEN", first="Paul"),
        ],
    )  # fmt: skip
    return activity, mailboxes
