"""Parsing of the national extraction files: headers, rows, rejections, fuzzing."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from directory_data import (
    ACTIVITY_HEADER_LINE,
    DR_LEFEVRE,
    DR_MARTIN,
    MAILBOX_HEADER_LINE,
    activity_line,
    mailbox_line,
    rpps,
)
from mssante_operator.directory.formats import (
    ACTIVITY_SPEC,
    MAILBOX_COLUMNS,
    MAILBOX_LIMITS,
    MAILBOX_SPEC,
    PRACTITIONER_COLUMNS,
    PRACTITIONER_LIMITS,
    FileKind,
    HeaderError,
    MailboxRow,
    PractitionerRow,
    _luhn_ok,
    detect_kind,
    resolve_columns,
    structure_id_from,
)
from mssante_operator.directory.models import MAILBOX_TEMPLATE, PRACTITIONER_TEMPLATE
from mssante_operator.directory.query import QueryKind, classify_query
from mssante_operator.directory.reader import (
    MAX_LINE_BYTES,
    ExtractionReader,
    Rejection,
    SourceError,
    discover_sources,
)
from mssante_operator.directory.sample import ACTIVITY_HEADER, MAILBOX_HEADER, SampleMailbox, generate_sample
from mssante_operator.directory.text import InvalidAddress, normalise_address, normalise_header, search_key
from mssante_operator.identifiers import InvalidIdentifier, luhn_valid


def read(data: bytes, name: str = "PS_LibreAcces_Personne_activite_202611010000.txt") -> list[object]:
    reader = ExtractionReader(io.BytesIO(data), name)
    return list(reader.rows())


def text_file(header: str, *lines: str) -> bytes:
    return ("\n".join([header, *lines]) + "\n").encode("utf-8")


# -- headers -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variant", "expected"),
    [
        ("Libellé commune (coord. structure)", "libelle commune coord structure"),
        ("LIBELLE COMMUNE (COORD.STRUCTURE)", "libelle commune coord structure"),
        ("Libellé  commune  (coordonnées structure)", "libelle commune coord structure"),
        ("libelle_commune_coord_structure", "libelle commune coord structure"),
        ("Type d'identifiant PP", "type identifiant pp"),
        ("Type Identifiant PP", "type identifiant pp"),
        ("Adresse e-mail (coord. structure)", "adresse e mail coord structure"),
        ("Adresse email (coord. structure)", "adresse e mail coord structure"),
        ("\ufeffType de BAL", "type bal"),
    ],
)
def test_header_names_are_normalised(variant: str, expected: str) -> None:
    assert normalise_header(variant) == expected


def test_columns_are_found_by_name_not_position() -> None:
    header = list(reversed(ACTIVITY_HEADER))
    index = resolve_columns(header, ACTIVITY_SPEC)
    assert header[index["last_name"]] == "Nom d'exercice"
    assert header[index["id_pp"]] == "Identifiant PP"


def test_a_missing_required_column_is_named() -> None:
    header = [h for h in ACTIVITY_HEADER if h != "Nom d'exercice"]
    with pytest.raises(HeaderError, match="missing required column 'Nom d'exercice'"):
        read(text_file("|".join(header) + "|"))


def test_several_missing_columns_are_all_named() -> None:
    header = [h for h in MAILBOX_HEADER if h not in {"Adresse BAL", "Identification nationale PP"}]
    with pytest.raises(
        HeaderError, match=r"missing required columns .*Adresse BAL.*Identification nationale PP"
    ):
        read(text_file("|".join(header) + "|"), "Extraction_Correspondance_MSSante_1.txt")


def test_a_header_from_the_other_file_type_is_refused() -> None:
    with pytest.raises(HeaderError, match="named like a PS_LibreAcces_Personne_activite file"):
        read(text_file(MAILBOX_HEADER_LINE), "PS_LibreAcces_Personne_activite_202611010000.txt")


def test_an_unknown_header_is_refused() -> None:
    with pytest.raises(HeaderError, match="neither"):
        read(b"a|b|c|\n1|2|3|\n", "whatever.txt")


def test_kind_comes_from_the_header_when_the_name_says_nothing() -> None:
    assert detect_kind(list(MAILBOX_HEADER), "export.txt") is FileKind.MAILBOX
    assert detect_kind(list(ACTIVITY_HEADER), "export.txt") is FileKind.ACTIVITY


def test_empty_file_and_non_utf8_header() -> None:
    with pytest.raises(HeaderError, match="empty"):
        read(b"")
    with pytest.raises(HeaderError, match="not valid UTF-8"):
        read(b"Type d'identifiant PP|Nom d'exercice\xff|\n")


def test_field_limits_match_the_store_columns() -> None:
    for columns, limits, model in (
        (PRACTITIONER_COLUMNS, PRACTITIONER_LIMITS, PRACTITIONER_TEMPLATE),
        (MAILBOX_COLUMNS, MAILBOX_LIMITS, MAILBOX_TEMPLATE),
    ):
        assert tuple(model.c.keys()) == columns
        for name, limit in zip(columns, limits, strict=True):
            length = getattr(model.c[name].type, "length", None)
            assert length == limit, name
    for spec, model in ((ACTIVITY_SPEC, PRACTITIONER_TEMPLATE), (MAILBOX_SPEC, MAILBOX_TEMPLATE)):
        for column in spec:
            if column.field in model.c:
                assert column.limit <= model.c[column.field].type.length, column.field


# -- rows ----------------------------------------------------------------------------------------


def test_an_activity_line_becomes_a_practitioner_row() -> None:
    [row] = read(text_file(ACTIVITY_HEADER_LINE, activity_line(DR_LEFEVRE, "LEFÈVRE", "Hélène")))
    assert isinstance(row, PractitionerRow)
    assert row.national_id == "8" + DR_LEFEVRE
    assert row.structure_id == "1750000018"
    assert row.search_key == "lefevre helene"
    assert row.civility == "Docteur" and row.profession_label == "Médecin"


def test_extra_columns_are_ignored_wherever_they_are() -> None:
    header = ["Colonne nouvelle", *ACTIVITY_HEADER, "Code rôle", "Libellé rôle"]
    line = "x|" + activity_line(DR_MARTIN, "MARTIN", "Jean") + "R1|Titulaire|"
    [row] = read(text_file("|".join(header) + "|", line))
    assert isinstance(row, PractitionerRow) and row.last_name == "MARTIN"


def test_trailing_pipe_is_optional_and_crlf_and_bom_are_accepted() -> None:
    line = activity_line(DR_MARTIN, "MARTIN", "Jean")
    data = ("\ufeff" + ACTIVITY_HEADER_LINE[:-1] + "\r\n" + line[:-1] + "\r\n" + line + "\r\n").encode()
    rows = read(data)
    assert len(rows) == 2 and all(isinstance(r, PractitionerRow) for r in rows)


def test_bad_lines_are_rejected_with_line_number_and_reason() -> None:
    good = activity_line(DR_MARTIN, "MARTIN", "Jean")
    bad_luhn = activity_line(DR_MARTIN[:-1] + str((int(DR_MARTIN[-1]) + 1) % 10), "MARTIN", "Jean")
    lines = [
        good,
        "1|2|3|",
        bad_luhn,
        activity_line(DR_MARTIN, "", "Jean"),
        activity_line(DR_MARTIN, "MARTIN", "Jean", id_type="5"),
        activity_line(DR_MARTIN, "MARTIN", "Jean", national_id="8" + DR_LEFEVRE),
        activity_line(DR_MARTIN, "MARTIN", "Jean", finess="7500"),
        activity_line("75123456", "NGUYEN", "Zoé", id_type="0"),
        activity_line(DR_MARTIN, "M" * 250, "Jean"),
    ]
    data = text_file(ACTIVITY_HEADER_LINE, *lines)
    data += b"\xff\xfe|broken|\n" + b"abc\x00def|\n"
    rows = read(data)
    rejections = [r for r in rows if isinstance(r, Rejection)]
    assert [r.line for r in rejections] == [3, 4, 5, 6, 7, 8, 9, 10, 11, 12]
    reasons = [r.reason for r in rejections]
    assert "expected 52 fields, found 3" in reasons[0]
    assert "check digit" in reasons[1] and "'Identifiant PP'" in reasons[1]
    assert "'Nom d'exercice' is empty" in reasons[2]
    assert "neither 8 (RPPS) nor 0 (ADELI)" in reasons[3]
    assert "does not match" in reasons[4]
    assert "'Numéro FINESS site'" in reasons[5]
    assert "ADELI" in reasons[6]
    assert "longer than 200 characters" in reasons[7]
    assert "not valid UTF-8" in reasons[8]
    assert "NUL" in reasons[9]


def test_an_overlong_line_is_rejected_without_reading_it_whole() -> None:
    data = text_file(ACTIVITY_HEADER_LINE) + b"x" * (3 * MAX_LINE_BYTES) + b"\n"
    data += (activity_line(DR_MARTIN, "MARTIN", "Jean") + "\n").encode()
    rows = read(data)
    assert isinstance(rows[0], Rejection) and "longer than" in rows[0].reason and rows[0].line == 2
    assert isinstance(rows[1], PractitionerRow)


def test_mailbox_lines() -> None:
    lines = [
        mailbox_line("PER", "Jean.Martin@Hopital-Demo.mssante.test", national_id="8" + DR_MARTIN),
        mailbox_line("ORG", "cardio@hopital-demo.mssante.test", structure="750000018", service="Cardiologie"),
        mailbox_line("APP", "dpi@hopital-demo.mssante.test", structure="1750000018"),
        mailbox_line("CAB", "cab@medecin.mssante.fr", structure="12345678901234", structure_type="3"),
        mailbox_line("XXX", "x@medecin.mssante.fr", national_id="8" + DR_MARTIN),
        mailbox_line("PER", "not-an-address", national_id="8" + DR_MARTIN),
        mailbox_line("PER", "nobody@medecin.mssante.fr"),
        mailbox_line("ORG", "org@medecin.mssante.fr"),
        mailbox_line("ORG", "org@medecin.mssante.fr", structure="12"),
    ]
    rows = read(text_file(MAILBOX_HEADER_LINE, *lines), "Extraction_Correspondance_MSSante_1.txt")
    per, org, app, cab = rows[:4]
    assert isinstance(per, MailboxRow) and per.address == "jean.martin@hopital-demo.mssante.test"
    assert per.national_id == "8" + DR_MARTIN
    assert (
        isinstance(org, MailboxRow)
        and org.structure_id == "1750000018"
        and org.search_key.startswith("cardiologie")
    )
    assert isinstance(app, MailboxRow) and app.structure_id == "1750000018"
    assert isinstance(cab, MailboxRow) and cab.structure_id == "312345678901234"
    reasons = [r.reason for r in rows[4:] if isinstance(r, Rejection)]
    assert len(reasons) == 5
    assert "not one of PER" in reasons[0]
    assert "'Adresse BAL'" in reasons[1]
    assert "PER mailbox nobody@medecin.mssante.fr has no" in reasons[2]
    assert "neither a structure id nor a national id" in reasons[3]
    assert "'Identification Structure'" in reasons[4]


@pytest.mark.parametrize(
    ("type_code", "ident", "expected"),
    [
        ("1", "750000018", "1750000018"),
        ("1", "1750000018", "1750000018"),
        ("FINESS", "2A0000018", "12A0000018"),
        ("3", "12345678901234", "312345678901234"),
        ("", "1750000018", "1750000018"),
        ("9", "ABC", "ABC"),
    ],
)
def test_structure_ids(type_code: str, ident: str, expected: str) -> None:
    assert structure_id_from(type_code, ident) == expected


def test_bad_structure_id() -> None:
    with pytest.raises(InvalidIdentifier):
        structure_id_from("1", "75")


# -- fuzzing -------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_random_bytes_never_crash(data: bytes) -> None:
    try:
        rows = read(data, "anything.txt")
    except HeaderError as exc:
        assert str(exc)
        return
    assert all(isinstance(r, PractitionerRow | MailboxRow | Rejection) for r in rows)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=20))
def test_random_lines_after_a_real_header_never_crash(lines: list[bytes]) -> None:
    for header, name in ((ACTIVITY_HEADER_LINE, "PS_LibreAcces_Personne_activite_1.txt"),
                         (MAILBOX_HEADER_LINE, "Extraction_Correspondance_MSSante_1.txt")):  # fmt: skip
        data = header.encode() + b"\n" + b"\n".join(lines)
        for row in read(data, name):
            if isinstance(row, Rejection):
                assert row.line >= 2 and row.reason


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.text(alphabet=st.characters(exclude_characters="|\n\r"), max_size=30), min_size=52, max_size=52
    )
)
def test_random_fields_in_the_right_count_never_crash(fields: list[str]) -> None:
    data = (ACTIVITY_HEADER_LINE + "\n" + "|".join(fields) + "|\n").encode("utf-8", "surrogatepass")
    try:
        rows = read(data)
    except UnicodeError:
        return
    assert len(rows) <= 1


@given(st.text(alphabet="0123456789", min_size=1, max_size=20))
def test_the_fast_luhn_check_agrees_with_the_identifiers_module(digits: str) -> None:
    assert _luhn_ok(digits) == luhn_valid(digits)


@given(st.text(max_size=60))
def test_search_key_is_ascii_lowercase_words(text: str) -> None:
    key = search_key(text)
    assert key == key.strip() and "  " not in key
    assert all(c.isascii() and (c.isdigit() or c.islower() or c == " ") for c in key)


def test_search_key_folds_accents() -> None:
    assert search_key("LEFÈVRE", "Hélène") == search_key("lefevre", "helene") == "lefevre helene"
    assert search_key("N'Diaye") == "n diaye"


@given(st.text(max_size=80))
def test_normalise_address_accepts_or_explains(text: str) -> None:
    try:
        address = normalise_address(text)
    except InvalidAddress as exc:
        assert str(exc)
    else:
        assert address == address.lower() and address.count("@") == 1


# -- sources, sample, queries --------------------------------------------------------------------


def test_zip_sources_and_bad_archives(tmp_path: Path) -> None:
    import zipfile

    activity, mailbox = generate_sample(tmp_path / "s", 20, stamp="202611010000")
    archive = tmp_path / "extraction.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        z.write(activity, activity.name)
        z.write(mailbox, "sub/" + mailbox.name)
        z.writestr("LISEZMOI.pdf", b"%PDF")
    sources = discover_sources([archive])
    assert sorted(s.name for s in sources) == sorted([activity.name, mailbox.name])
    with sources[0].open() as stream:
        assert stream.readline().startswith(b"Type")
    fake = tmp_path / "fake.zip"
    fake.write_bytes(b"not a zip")
    with pytest.raises(SourceError, match="not a readable ZIP"):
        discover_sources([fake])
    with pytest.raises(SourceError, match="no such file"):
        discover_sources([tmp_path / "missing.txt"])
    empty = tmp_path / "empty.zip"
    with zipfile.ZipFile(empty, "w") as z:
        z.writestr("readme.pdf", b"x")
    with pytest.raises(SourceError, match=r"no \.txt"):
        discover_sources([empty])


def test_generated_sample_parses_without_rejection(tmp_path: Path) -> None:
    forced = [
        SampleMailbox("jean.martin@hopital-demo.mssante.test", "PER", "810000000009"),
        SampleMailbox("cardiologie@hopital-demo.mssante.test", "ORG", structure_id="1750000018"),
        SampleMailbox("dpi@hopital-demo.mssante.test", "APP", structure_id="1750000018"),
    ]
    activity, mailbox = generate_sample(tmp_path, 300, seed=3, forced=forced)
    assert activity.name.startswith("PS_LibreAcces_Personne_activite_") and activity.suffix == ".txt"
    assert mailbox.read_text(encoding="utf-8").splitlines()[0] == MAILBOX_HEADER_LINE
    seen: dict[str, list[object]] = {}
    for path in (activity, mailbox):
        with path.open("rb") as stream:
            seen[path.name] = list(ExtractionReader(stream, path.name).rows())
    rows = [r for v in seen.values() for r in v]
    assert not [r for r in rows if isinstance(r, Rejection)]
    practitioners = [r for r in rows if isinstance(r, PractitionerRow)]
    mailboxes = [r for r in rows if isinstance(r, MailboxRow)]
    assert len(practitioners) >= 300
    assert any(p.national_id == "810000000009" and p.structure_id == "1750000018" for p in practitioners)
    addresses = [m.address for m in mailboxes]
    assert len(addresses) > len(set(addresses)), "the real file repeats some mailbox lines"
    assert {"jean.martin@hopital-demo.mssante.test", "cardiologie@hopital-demo.mssante.test"} <= set(
        addresses
    )
    assert {m.type for m in mailboxes} >= {"PER", "ORG", "APP"}
    assert len({a.rpartition("@")[2] for a in addresses}) >= 4
    assert any(p.national_id.startswith("0") for p in practitioners), "some ADELI practitioners"
    # Same seed, same files.
    again = generate_sample(
        tmp_path / "again", 300, seed=3, forced=forced, stamp=activity.stem.rsplit("_", 1)[1]
    )
    assert again[0].read_bytes() == activity.read_bytes()


@pytest.mark.parametrize(
    ("query", "kind", "value"),
    [
        ("Jean.Martin@Hopital-Demo.mssante.test", QueryKind.MAILBOX, "jean.martin@hopital-demo.mssante.test"),
        ("8" + DR_MARTIN, QueryKind.NATIONAL_ID, "8" + DR_MARTIN),
        (DR_MARTIN, QueryKind.NATIONAL_ID, "8" + DR_MARTIN),
        ("0751234567", QueryKind.NATIONAL_ID, "0751234567"),
        ("1750000018", QueryKind.STRUCTURE, "1750000018"),
        ("12345678901234", QueryKind.STRUCTURE, "312345678901234"),
        ("2A0000018", QueryKind.NATIONAL_ID, "02A0000018"),
        ("lefèvre hél", QueryKind.NAME, "lefèvre hél"),
    ],
)
def test_queries_are_classified(query: str, kind: QueryKind, value: str) -> None:
    q = classify_query(query)
    assert (q.kind, q.value) == (kind, value)


def test_a_nine_character_number_is_tried_as_adeli_then_finess() -> None:
    q = classify_query("750000018")
    assert q.kind is QueryKind.NATIONAL_ID and q.alternative is not None
    assert q.alternative.value == "1750000018"


def test_rpps_helper() -> None:
    assert len(rpps("1234567890")) == 11
