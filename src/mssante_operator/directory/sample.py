"""Synthetic extraction files in the exact national format, for demos, tests and benchmarks.

Names are drawn from common French names, RPPS numbers carry a valid Luhn digit, FINESS numbers
use real département prefixes (2A/2B included), and a practitioner's mailbox appears once per
activity, as the real mailbox extraction repeats it. Output is streamed: any size, constant memory
apart from the set of addresses already handed out.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from mssante_operator.config.models import DemoSettings
from mssante_operator.directory.formats import FILE_PREFIXES, FileKind
from mssante_operator.directory.text import strip_accents
from mssante_operator.identifiers import luhn_check_digit, parse_national_person_id, parse_structure_id

ACTIVITY_HEADER: tuple[str, ...] = (
    "Type d'identifiant PP",
    "Identifiant PP",
    "Identification nationale PP",
    "Code civilité d'exercice",
    "Libellé civilité d'exercice",
    "Code civilité",
    "Libellé civilité",
    "Nom d'exercice",
    "Prénom d'exercice",
    "Code profession",
    "Libellé profession",
    "Code catégorie professionnelle",
    "Libellé catégorie professionnelle",
    "Code type savoir-faire",
    "Libellé type savoir-faire",
    "Code savoir-faire",
    "Libellé savoir-faire",
    "Code mode exercice",
    "Libellé mode exercice",
    "Numéro SIRET site",
    "Numéro SIREN site",
    "Numéro FINESS site",
    "Numéro FINESS établissement juridique",
    "Identifiant technique de la structure",
    "Raison sociale site",
    "Enseigne commerciale site",
    "Complément destinataire (coord. structure)",
    "Complément point géographique (coord. structure)",
    "Numéro Voie (coord. structure)",
    "Indice répétition voie (coord. structure)",
    "Code type de voie (coord. structure)",
    "Libellé type de voie (coord. structure)",
    "Libellé Voie (coord. structure)",
    "Mention distribution (coord. structure)",
    "Bureau cedex (coord. structure)",
    "Code postal (coord. structure)",
    "Code commune (coord. structure)",
    "Libellé commune (coord. structure)",
    "Code pays (coord. structure)",
    "Libellé pays (coord. structure)",
    "Téléphone (coord. structure)",
    "Téléphone 2 (coord. structure)",
    "Télécopie (coord. structure)",
    "Adresse e-mail (coord. structure)",
    "Code Département (structure)",
    "Libellé Département (structure)",
    "Ancien identifiant de la structure",
    "Autorité d'enregistrement",
    "Code secteur d'activité",
    "Libellé secteur d'activité",
    "Code section tableau pharmaciens",
    "Libellé section tableau pharmaciens",
)

MAILBOX_HEADER: tuple[str, ...] = (
    "Type de BAL",
    "Adresse BAL",
    "Type Identifiant PP",
    "Identifiant PP",
    "Identification nationale PP",
    "Type identifiant structure",
    "Identification Structure",
    "Service de rattachement",
    "Civilité d'exercice",
    "Nom d'exercice",
    "Prénom d'exercice",
    "Catégorie profession",
    "Libellé de catégorie profession",
    "Code Profession",
    "Libellé Profession",
    "Code savoir-faire",
    "Libellé savoir-faire",
    "Dématérialisation",
    "Raison Sociale structure BAL",
    "Enseigne commerciale structure BAL",
    "L2COMPLEMENTLOCALISATION",
    "L3COMPLEMENTDISTRIBUTION",
    "L4NUMEROVOIE",
    "L4COMPLEMENTNUMEROVOIE",
    "NL4TYPEVOIE",
    "L4LIBELLEVOIE",
    "L5LIEUDITMENTION",
    "L6LIGNEACHEMINEMENT",
    "Code postal",
    "Département",
    "Pays",
)

DEMO_DOMAIN = "hopital-demo.mssante.test"
DEFAULT_DOMAINS: tuple[str, ...] = (
    "medecin.mssante.fr",
    "pharmacien.mssante.fr",
    "chu-exemple.mssante.fr",
    "ch-exemple.mssante.fr",
    "infirmier.mssante.fr",
    DEMO_DOMAIN,
)

_LAST_NAMES = (
    "Martin", "Bernard", "Thomas", "Petit", "Robert", "Richard", "Durand", "Dubois", "Moreau",
    "Laurent", "Simon", "Michel", "Lefèvre", "Leroy", "Roux", "David", "Bertrand", "Morel", "Fournier",
    "Girard", "Bonnet", "Dupont", "Lambert", "Fontaine", "Rousseau", "Vincent", "Müller", "Lefebvre",
    "Faure", "André", "Mercier", "Blanc", "Guérin", "Boyer", "Garnier", "Chevalier", "François",
    "Legrand", "Gauthier", "Garcia", "Perrin", "Robin", "Clément", "Morin", "Nicolas", "Henry",
    "Roussel", "Mathieu", "Gautier", "Masson", "Marchand", "Duval", "Denis", "Dumont", "Marie",
    "Lemaire", "Noël", "Meyer", "Dufour", "Meunier", "Brun", "Blanchard", "Giraud", "Joly", "Rivière",
    "Lucas", "Brunet", "Gaillard", "Barbier", "Arnaud", "Martínez", "Gérard", "Roche", "Renard",
    "Schmitt", "Roy", "Leroux", "Colin", "Vidal", "Caron", "Picard", "Roger", "Fabre", "Aubert",
    "Lemoine", "Renaud", "Dumas", "Lacroix", "Olivier", "Philippe", "Bourgeois", "Pierre", "Benoît",
    "Rey", "Leclerc", "Payet", "Rolland", "Leclercq", "Guillaume", "Lecomte", "Lopez", "Jean",
    "Dupuy", "Guillot", "Hubert", "Berger", "Carpentier", "Sánchez", "Dupuis", "Moulin", "Louis",
    "Deschamps", "Huet", "Vasseur", "Perez", "Boucher", "Fleury", "Royer", "Klein", "Jacquet",
    "Adam", "Paris", "Poirier", "Marty", "Aubry", "Guyot", "Carré", "Charles", "Renault", "Charpentier",
    "Ménard", "Maillard", "Baron", "Bertin", "Bailly", "Hervé", "Schneider", "Fernandez", "Le Gall",
    "Collet", "Léger", "Bouvier", "Julien", "Prévost", "Millet", "Perrot", "Daniel", "Le Roux",
    "Cousin", "Germain", "Breton", "Besson", "Langlois", "Rémy", "Le Goff", "Pelletier", "Lévêque",
    "Perrier", "Leblanc", "Barré", "Lebrun", "Marchal", "Weber", "Mallet", "Hamon", "Boulanger",
    "Jacob", "Monnier", "Michaud", "Rodriguez", "Guichard", "Gillet", "Étienne", "Grondin", "Poulain",
    "Tessier", "Chevallier", "Collin", "Chauvin", "Da Silva", "Bouchet", "Gay", "Lemaître", "Bénard",
    "Maréchal", "Humbert", "Reynaud", "Antoine", "Hoarau", "Perret", "Barthélemy", "Cordier", "Pichon",
    "Lejeune", "Gilbert", "Lamy", "Delaunay", "Pasquier", "Carlier", "Laporte", "N'Diaye", "D'Almeida",
)  # fmt: skip

_FIRST_NAMES = (
    ("Jean", "M"), ("Marie", "MME"), ("Pierre", "M"), ("Nathalie", "MME"), ("Michel", "M"),
    ("Isabelle", "MME"), ("Philippe", "M"), ("Sylvie", "MME"), ("Alain", "M"), ("Catherine", "MME"),
    ("Nicolas", "M"), ("Françoise", "MME"), ("Christophe", "M"), ("Sandrine", "MME"), ("Stéphane", "M"),
    ("Valérie", "MME"), ("Frédéric", "M"), ("Christine", "MME"), ("Laurent", "M"), ("Céline", "MME"),
    ("Sébastien", "M"), ("Hélène", "MME"), ("Julien", "M"), ("Aurélie", "MME"), ("Thomas", "M"),
    ("Émilie", "MME"), ("David", "M"), ("Chloé", "MME"), ("Olivier", "M"), ("Léa", "MME"),
    ("François", "M"), ("Camille", "MME"), ("Éric", "M"), ("Inès", "MME"), ("Loïc", "M"),
    ("Anaïs", "MME"), ("Jérôme", "M"), ("Agnès", "MME"), ("Benoît", "M"), ("Zoé", "MME"),
    ("Mathieu", "M"), ("Sophie", "MME"), ("Guillaume", "M"), ("Julie", "MME"), ("Antoine", "M"),
    ("Claire", "MME"), ("Hugo", "M"), ("Manon", "MME"), ("Noël", "M"), ("Maëlle", "MME"),
    ("Jean-Pierre", "M"), ("Anne-Sophie", "MME"), ("Jean-François", "M"), ("Marie-Christine", "MME"),
    ("Yannick", "M"), ("Gaëlle", "MME"), ("Rémi", "M"), ("Bérénice", "MME"), ("Hervé", "M"),
    ("Mélanie", "MME"), ("Raphaël", "M"), ("Océane", "MME"), ("Gérard", "M"), ("Josée", "MME"),
)  # fmt: skip

# (city, département code, département label, postal code, INSEE commune code)
_CITIES = (
    ("Paris", "75", "Paris", "75013", "75113"),
    ("Lyon", "69", "Rhône", "69003", "69383"),
    ("Marseille", "13", "Bouches-du-Rhône", "13005", "13205"),
    ("Toulouse", "31", "Haute-Garonne", "31059", "31555"),
    ("Nantes", "44", "Loire-Atlantique", "44093", "44109"),
    ("Strasbourg", "67", "Bas-Rhin", "67091", "67482"),
    ("Montpellier", "34", "Hérault", "34295", "34172"),
    ("Bordeaux", "33", "Gironde", "33076", "33063"),
    ("Lille", "59", "Nord", "59037", "59350"),
    ("Rennes", "35", "Ille-et-Vilaine", "35033", "35238"),
    ("Reims", "51", "Marne", "51092", "51454"),
    ("Saint-Étienne", "42", "Loire", "42055", "42218"),
    ("Grenoble", "38", "Isère", "38043", "38185"),
    ("Dijon", "21", "Côte-d'Or", "21079", "21231"),
    ("Angers", "49", "Maine-et-Loire", "49933", "49007"),
    ("Nîmes", "30", "Gard", "30029", "30189"),
    ("Clermont-Ferrand", "63", "Puy-de-Dôme", "63003", "63113"),
    ("Brest", "29", "Finistère", "29609", "29019"),
    ("Limoges", "87", "Haute-Vienne", "87042", "87085"),
    ("Amiens", "80", "Somme", "80054", "80021"),
    ("Ajaccio", "2A", "Corse-du-Sud", "20090", "2A004"),
    ("Bastia", "2B", "Haute-Corse", "20200", "2B033"),
    ("Besançon", "25", "Doubs", "25030", "25056"),
    ("Caen", "14", "Calvados", "14033", "14118"),
    ("Poitiers", "86", "Vienne", "86021", "86194"),
    ("Saint-Denis", "97", "La Réunion", "97400", "97411"),
)

# (code, label, category uses RPPS, specialties as (type code, type label, code, label))
_PROFESSIONS: tuple[tuple[str, str, bool, tuple[tuple[str, str, str, str], ...], int], ...] = (
    (
        "10",
        "Médecin",
        True,
        (
            ("S", "Spécialité ordinale", "SM54", "Médecine générale"),
            ("S", "Spécialité ordinale", "SM04", "Cardiologie et maladies vasculaires"),
            ("S", "Spécialité ordinale", "SM26", "Qualifié en Médecine Générale"),
            ("S", "Spécialité ordinale", "SM40", "Pédiatrie"),
            ("S", "Spécialité ordinale", "SM02", "Anesthesie-réanimation"),
            ("S", "Spécialité ordinale", "SM53", "Radio-diagnostic"),
            ("S", "Spécialité ordinale", "SM42", "Psychiatrie"),
            ("S", "Spécialité ordinale", "SM15", "Gynécologie-obstétrique"),
        ),
        40,
    ),
    ("21", "Pharmacien", True, (("", "", "", ""),), 12),
    ("40", "Chirurgien-Dentiste", True, (("S", "Spécialité ordinale", "SCD01", "Orthopédie ODF"),), 7),
    ("50", "Sage-Femme", True, (("", "", "", ""),), 4),
    ("60", "Infirmier", True, (("", "", "", ""),), 22),
    ("70", "Masseur-Kinésithérapeute", True, (("", "", "", ""),), 8),
    ("80", "Pédicure-Podologue", True, (("", "", "", ""),), 2),
    ("91", "Orthophoniste", False, (("", "", "", ""),), 2),
    ("92", "Orthoptiste", False, (("", "", "", ""),), 1),
    ("94", "Ergothérapeute", False, (("", "", "", ""),), 1),
    ("96", "Psychomotricien", False, (("", "", "", ""),), 1),
)  # fmt: skip
_PROFESSION_WEIGHTS = [p[4] for p in _PROFESSIONS]
_MODES = (("L", "Libéral"), ("S", "Salarié"), ("B", "Bénévole"))
_SERVICES = ("cardiologie", "urgences", "pediatrie", "radiologie", "maternite", "secretariat.medical",
             "laboratoire", "pharmacie", "oncologie", "neurologie", "dim", "bloc.operatoire")  # fmt: skip


@dataclass(frozen=True)
class SampleMailbox:
    """A mailbox the sample must contain (e.g. the demo instance's own mailboxes)."""

    address: str
    type: str
    national_id: str | None = None
    structure_id: str | None = None
    last_name: str | None = None
    first_name: str | None = None
    service: str | None = None


def sample_from_demo(demo: DemoSettings) -> list[SampleMailbox]:
    """The `[demo]` mailboxes of the configuration, as entries a sample must include."""
    return [
        SampleMailbox(
            address=m.address.lower(),
            type=m.type.value,
            national_id=m.owner,
            structure_id=m.structure_id,
            service=m.address.split("@", 1)[0] if m.type.value != "PER" else None,
        )
        for m in demo.mailboxes
    ]


@dataclass(frozen=True)
class _Structure:
    finess: str  # empty for a practice identified by SIRET
    siret: str
    name: str
    city: tuple[str, str, str, str, str]
    domain: str

    @property
    def structure_type_and_id(self) -> tuple[str, str]:
        return ("1", self.finess) if self.finess else ("3", self.siret)


def _slug(text: str) -> str:
    ascii_text = strip_accents(text).lower()
    return "".join(c if c.isalnum() else "-" for c in ascii_text).strip("-").replace("--", "-")


def _local(first: str, last: str) -> str:
    return f"{_slug(first)}.{_slug(last)}".replace("-.", ".")


class _Writer:
    def __init__(self, path: Path, header: Sequence[str]) -> None:
        self._file = path.open("w", encoding="utf-8", newline="\n", buffering=1 << 20)
        self._index = {name: i for i, name in enumerate(header)}
        self._width = len(header)
        self._file.write("|".join(header) + "|\n")
        self.lines = 0

    def row(self, values: dict[str, str]) -> None:
        fields = [""] * self._width
        for name, value in values.items():
            fields[self._index[name]] = value
        self._file.write("|".join(fields) + "|\n")
        self.lines += 1

    def close(self) -> None:
        self._file.close()


class _Generator:
    def __init__(self, rng: random.Random, domains: Sequence[str], practitioners: int) -> None:
        self.rng = rng
        self.domains = list(domains)
        self.used: set[str] = set()
        count = max(4, practitioners // 40)
        self.structures = [self._structure(j) for j in range(count)]

    def _structure(self, j: int) -> _Structure:
        rng = self.rng
        city = rng.choice(_CITIES)
        dept = city[1] if city[1] in ("2A", "2B") else city[1][:2]
        kind = rng.random()
        if kind < 0.7:
            finess = f"{dept}{(j * 7919) % 10_000_000:07d}"
            town, person = city[0].upper(), rng.choice(_LAST_NAMES).upper()
            name = rng.choice(
                (
                    f"CENTRE HOSPITALIER DE {town}",
                    f"CHU DE {town}",
                    f"CLINIQUE {person}",
                    f"EHPAD LES {person}",
                )
            )
            domain = self.domains[j % len(self.domains)]
            return _Structure(finess, "", name, city, domain)
        siret = f"{(j * 104729) % 10**9:09d}{j % 100_000:05d}"
        name = f"CABINET DU DR {rng.choice(_LAST_NAMES).upper()}"
        return _Structure("", siret, name, city, rng.choice(self.domains))

    def address(self, local: str, domain: str) -> str:
        candidate = f"{local}@{domain}"
        n = 1
        while candidate in self.used:
            n += 1
            candidate = f"{local}{n}@{domain}"
        self.used.add(candidate)
        return candidate


def _activity_values(
    national_id: str,
    last: str,
    first: str,
    civility: str,
    profession: tuple[str, str, bool, tuple[tuple[str, str, str, str], ...], int],
    specialty: tuple[str, str, str, str],
    mode: tuple[str, str],
    structure: _Structure,
    tech_id: str,
) -> dict[str, str]:
    city = structure.city
    doctor = profession[0] == "10"
    return {
        "Type d'identifiant PP": national_id[0],
        "Identifiant PP": national_id[1:],
        "Identification nationale PP": national_id,
        "Code civilité d'exercice": "DR" if doctor else "",
        "Libellé civilité d'exercice": "Docteur" if doctor else "",
        "Code civilité": civility,
        "Libellé civilité": "Monsieur" if civility == "M" else "Madame",
        "Nom d'exercice": last.upper(),
        "Prénom d'exercice": first,
        "Code profession": profession[0],
        "Libellé profession": profession[1],
        "Code catégorie professionnelle": "C",
        "Libellé catégorie professionnelle": "Civil",
        "Code type savoir-faire": specialty[0],
        "Libellé type savoir-faire": specialty[1],
        "Code savoir-faire": specialty[2],
        "Libellé savoir-faire": specialty[3],
        "Code mode exercice": mode[0],
        "Libellé mode exercice": mode[1],
        "Numéro SIRET site": structure.siret,
        "Numéro SIREN site": structure.siret[:9],
        "Numéro FINESS site": structure.finess,
        "Numéro FINESS établissement juridique": structure.finess[:2] + "0" + structure.finess[3:]
        if structure.finess
        else "",
        "Identifiant technique de la structure": tech_id,
        "Raison sociale site": structure.name,
        "Code postal (coord. structure)": city[3],
        "Code commune (coord. structure)": city[4],
        "Libellé commune (coord. structure)": city[0].upper(),
        "Code pays (coord. structure)": "99000",
        "Libellé pays (coord. structure)": "France",
        "Code Département (structure)": city[1],
        "Libellé Département (structure)": city[2],
        "Autorité d'enregistrement": "RPPS/Ordre" if national_id[0] == "8" else "ARS/ADELI",
    }


def _mailbox_values(
    bal_type: str,
    address: str,
    national_id: str | None,
    structure: _Structure | None,
    structure_id: tuple[str, str] | None,
    service: str,
    last: str,
    first: str,
    profession: tuple[str, str] | None,
    specialty: tuple[str, str],
) -> dict[str, str]:
    values = {
        "Type de BAL": bal_type,
        "Adresse BAL": address,
        "Service de rattachement": service,
        "Nom d'exercice": last.upper() if last else "",
        "Prénom d'exercice": first,
        "Dématérialisation": "O",
        "Pays": "France",
    }
    if national_id:
        values.update(
            {
                "Type Identifiant PP": national_id[0],
                "Identifiant PP": national_id[1:],
                "Identification nationale PP": national_id,
            }
        )
    if profession:
        values.update({"Code Profession": profession[0], "Libellé Profession": profession[1]})
        values.update({"Code savoir-faire": specialty[0], "Libellé savoir-faire": specialty[1]})
    if structure_id:
        values.update(
            {"Type identifiant structure": structure_id[0], "Identification Structure": structure_id[1]}
        )
    if structure is not None:
        values.update(
            {
                "Raison Sociale structure BAL": structure.name,
                "L6LIGNEACHEMINEMENT": f"{structure.city[3]} {structure.city[0].upper()}",
                "Code postal": structure.city[3],
                "Département": structure.city[1],
            }
        )
    return values


def generate_sample(
    out_dir: Path,
    practitioners: int,
    seed: int = 0,
    domains: Sequence[str] = DEFAULT_DOMAINS,
    forced: Sequence[SampleMailbox] = (),
    mailbox_ratio: float = 0.3,
    stamp: str | None = None,
) -> tuple[Path, Path]:
    """Write an activity file and a mailbox file for `practitioners` synthetic practitioners.

    `forced` entries are written first: a PER entry gets an activity line (so its owner is an
    active practitioner), ORG/APP/CAB entries get their structure. Returns (activity, mailbox) paths.
    """
    if practitioners < 0:
        raise ValueError("practitioners must be zero or more")
    if not domains:
        raise ValueError("at least one mailbox domain is needed")
    rng = random.Random(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = stamp or datetime.now(UTC).strftime("%Y%m%d%H%M")
    activity_path = out_dir / f"{FILE_PREFIXES[FileKind.ACTIVITY]}_{stamp}.txt"
    mailbox_path = out_dir / f"{FILE_PREFIXES[FileKind.MAILBOX]}_{stamp}.txt"
    gen = _Generator(rng, domains, practitioners)
    activities = _Writer(activity_path, ACTIVITY_HEADER)
    mailboxes = _Writer(mailbox_path, MAILBOX_HEADER)
    try:
        _write_forced(gen, forced, activities, mailboxes)
        _write_random(gen, practitioners, mailbox_ratio, activities, mailboxes)
    finally:
        activities.close()
        mailboxes.close()
    return activity_path, mailbox_path


def _forced_structure(gen: _Generator, structure_id: str, domain: str) -> _Structure:
    parsed = parse_structure_id(structure_id)
    city = gen.rng.choice(_CITIES)
    if parsed.kind.value == "FINESS":
        return _Structure(parsed.number, "", "CENTRE HOSPITALIER DE DEMONSTRATION", city, domain)
    return _Structure("", parsed.number.ljust(14, "0")[:14], "CABINET DE DEMONSTRATION", city, domain)


def _write_forced(
    gen: _Generator, forced: Sequence[SampleMailbox], activities: _Writer, mailboxes: _Writer
) -> None:
    rng = gen.rng
    structures: dict[str, _Structure] = {}
    for entry in forced:
        if entry.structure_id and entry.structure_id not in structures:
            domain = entry.address.split("@", 1)[1]
            structures[entry.structure_id] = _forced_structure(gen, entry.structure_id, domain)
    home = next(iter(structures.values()), None)
    for entry in forced:
        gen.used.add(entry.address)
        structure = structures.get(entry.structure_id or "") or home
        if entry.type == "PER" and entry.national_id:
            national_id = parse_national_person_id(entry.national_id).value
            first, civility = rng.choice(_FIRST_NAMES)
            local = entry.address.split("@", 1)[0]
            guess = local.split(".")
            first = entry.first_name or (guess[0].title() if len(guess) > 1 else first)
            last = entry.last_name or (guess[-1].title() if len(guess) > 1 else rng.choice(_LAST_NAMES))
            profession = _PROFESSIONS[0]
            specialty = profession[3][1]
            target = structure or gen.structures[0]
            activities.row(
                _activity_values(
                    national_id, last, first, civility, profession, specialty, ("S", "Salarié"), target, ""
                )
            )
            mailboxes.row(
                _mailbox_values(
                    "PER",
                    entry.address,
                    national_id,
                    target,
                    target.structure_type_and_id,
                    entry.service or "",
                    last,
                    first,
                    (profession[0], profession[1]),
                    (specialty[2], specialty[3]),
                )
            )
        else:
            structure_key = entry.structure_id
            target = structures[structure_key] if structure_key else structure or gen.structures[0]
            mailboxes.row(
                _mailbox_values(
                    entry.type,
                    entry.address,
                    entry.national_id,
                    target,
                    target.structure_type_and_id,
                    entry.service or entry.address.split("@", 1)[0],
                    entry.last_name or "",
                    entry.first_name or "",
                    None,
                    ("", ""),
                )
            )


def _write_random(
    gen: _Generator, practitioners: int, mailbox_ratio: float, activities: _Writer, mailboxes: _Writer
) -> None:
    rng = gen.rng
    for j, structure in enumerate(gen.structures):
        if rng.random() < min(1.0, mailbox_ratio * 3):
            services = rng.sample(_SERVICES, k=rng.randint(1, 3))
            for service in services:
                org = gen.address(service, structure.domain)
                mailboxes.row(
                    _mailbox_values(
                        "ORG", org, None, structure, structure.structure_type_and_id,
                        service.replace(".", " ").title(), "", "", None, ("", ""),
                    )
                )  # fmt: skip
            if structure.finess and j % 3 == 0:
                app = gen.address("dpi", structure.domain)
                mailboxes.row(
                    _mailbox_values(
                        "APP", app, None, structure, structure.structure_type_and_id,
                        "Dossier patient informatisé", "", "", None, ("", ""),
                    )
                )  # fmt: skip
    for i in range(practitioners):
        profession = rng.choices(_PROFESSIONS, weights=_PROFESSION_WEIGHTS)[0]
        if profession[2] and rng.random() < 0.95:
            body = f"{2 + i // 10**9}{i % 10**9:09d}"
            national_id = "8" + body + luhn_check_digit(body)
        else:
            city = _CITIES[i % len(_CITIES)]
            dept = city[1] if city[1] in ("2A", "2B") else city[1][:2]
            national_id = f"0{dept}{i % 10**7:07d}"
        last = rng.choice(_LAST_NAMES)
        first, civility = rng.choice(_FIRST_NAMES)
        specialty = rng.choice(profession[3])
        roll = rng.random()
        count = 1 if roll < 0.8 else (2 if roll < 0.95 else 3)
        places = [rng.choice(gen.structures) for _ in range(count)]
        address: str | None = None
        if rng.random() < mailbox_ratio:
            domain = places[0].domain if rng.random() < 0.6 else rng.choice(gen.domains)
            address = gen.address(_local(first, last), domain)
        for n, structure in enumerate(places):
            mode = ("L", "Libéral") if structure.siret else rng.choice(_MODES[1:] if n else _MODES)
            activities.row(
                _activity_values(
                    national_id, last, first, civility, profession, specialty, mode, structure,
                    f"R1{i % 10**8:08d}{n:05d}",
                )
            )  # fmt: skip
            if address is not None:
                # The real extraction repeats a mailbox once per activity of its owner.
                mailboxes.row(
                    _mailbox_values(
                        "PER", address, national_id, structure, structure.structure_type_and_id, "",
                        last, first, (profession[0], profession[1]), (specialty[2], specialty[3]),
                    )
                )  # fmt: skip
        if address is not None and structure.siret and rng.random() < 0.3:
            cab = gen.address(f"cabinet.{_slug(last)}", rng.choice(gen.domains))
            mailboxes.row(
                _mailbox_values(
                    "CAB", cab, None, structure, structure.structure_type_and_id, "", "", "", None, ("", ""),
                )
            )  # fmt: skip
