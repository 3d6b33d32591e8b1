"""ANS's trust list XML: parse (bytes in, `TrustList` out) and write a sample in the same format.

The document comes from the network, so it is read with defusedxml's expat reader: entity
declarations (billion laughs), external entities and external DTDs (XXE) are refused. Parsing is
streaming SAX, which also gives every rejected `<Domaine>` its line number.

Format: namespace `https://listeblanche.mssante.fr/schema`; the root carries `<DateDeGeneration>`;
one `<Domaine>` per (domain, operator certificate) with `Nom`, `Description`,
`DNCertificatOperateur`, `ResponsableContact`, `SupportContact`, `DateMAJ`. Elements of other
namespaces (an XML signature, say) and unknown children are ignored.
"""

from __future__ import annotations

import contextlib
import re
import xml.sax
import xml.sax.handler
from collections.abc import Sequence
from datetime import UTC, datetime, tzinfo
from io import BytesIO
from typing import Final
from xml.etree import ElementTree
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from defusedxml import DefusedXmlException
from defusedxml.expatreader import create_parser

from mssante_operator.trust.entries import (
    DomainError,
    RejectedEntry,
    TrustEntry,
    TrustList,
    normalize_domain,
    unicode_domain,
)
from mssante_operator.trust.names import DNSyntaxError, dn_key, parse_dn

NAMESPACE: Final = "https://listeblanche.mssante.fr/schema"
ROOT_ELEMENT: Final = "ListeBlanche"
MAX_FIELD_LENGTH: Final = 4096

_FIELDS: Final = {
    "Nom": "nom",
    "Description": "description",
    "DNCertificatOperateur": "dn",
    "ResponsableContact": "responsable",
    "SupportContact": "support",
    "DateMAJ": "date_maj",
}


class TrustListError(ValueError):
    """The document is not a usable trust list; the message says where and why."""


def _paris() -> tzinfo:
    try:
        return ZoneInfo("Europe/Paris")
    except ZoneInfoNotFoundError:  # pragma: no cover - tzdata missing: UTC is the safe guess
        return UTC


_DATE_FORMATS: Final = (
    "%d/%m/%Y %H:%M:%S",
    "%d/%m/%Y %H:%M",
    "%d/%m/%Y",
    "%Y%m%d%H%M%SZ",
    "%Y%m%d%H%M%S",
    "%Y%m%d",
)


_ISO_START: Final = re.compile(r"\d{4}-\d{2}-\d{2}")


def parse_date(text: str) -> datetime:
    """ISO 8601 or the French `dd/mm/yyyy[ HH:MM[:SS]]`; a time without zone is Paris time."""
    value = text.strip()
    parsed: datetime | None = None
    if _ISO_START.match(value):
        with contextlib.suppress(ValueError):
            parsed = datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith("Z") else value)
    else:
        for fmt in _DATE_FORMATS:
            try:
                parsed = datetime.strptime(value, fmt)
            except ValueError:
                continue
            if fmt.endswith("Z"):
                parsed = parsed.replace(tzinfo=UTC)
            break
    if parsed is None:
        raise ValueError(f"unrecognised date {value[:60]!r}")
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=_paris())
    return parsed.astimezone(UTC)


_CONTROL: Final = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _clean(text: str) -> str:
    return _CONTROL.sub("", text).strip()


class _Handler(xml.sax.handler.ContentHandler):
    def __init__(self) -> None:
        super().__init__()
        self.locator: xml.sax.xmlreader.Locator | None = None
        self.depth = 0
        self.root_seen = False
        self.root_namespace: str | None = None
        self.generated_at: datetime | None = None
        self.generated_text: list[str] | None = None
        self.entries: list[TrustEntry] = []
        self.rejected: list[RejectedEntry] = []
        self.warnings: list[str] = []
        self.domaine_count = 0
        # Inside a <Domaine>: its line, its depth, the fields seen, the field being read.
        self.entry_line: int | None = None
        self.entry_depth = 0
        self.fields: dict[str, str] = {}
        self.duplicates: list[str] = []
        self.current_field: str | None = None
        self.text: list[str] = []
        self.seen_keys: set[tuple[str, str]] = set()

    def setDocumentLocator(self, locator: xml.sax.xmlreader.Locator) -> None:
        self.locator = locator

    def line(self) -> int | None:
        return self.locator.getLineNumber() if self.locator is not None else None

    def ours(self, namespace: str | None) -> bool:
        return namespace in (NAMESPACE, None, "")

    def startElementNS(self, name: tuple[str | None, str], qname: str | None, attrs: object) -> None:
        namespace, local = name
        self.depth += 1
        if self.depth == 1:
            self.root_seen = True
            self.root_namespace = namespace
            if namespace not in (NAMESPACE, None, ""):
                raise TrustListError(
                    f"line {self.line()}: root element <{local}> is in namespace {namespace!r}, "
                    f"expected {NAMESPACE!r}"
                )
            if not namespace:
                self.warnings.append(f"root element <{local}> has no namespace (expected {NAMESPACE})")
            return
        if not self.ours(namespace):
            return
        if self.entry_line is not None:
            if self.depth == self.entry_depth + 1 and local in _FIELDS:
                self.current_field = _FIELDS[local]
                self.text = []
            elif local == "Domaine":
                raise TrustListError(f"line {self.line()}: <Domaine> nested inside another <Domaine>")
            return
        if local == "Domaine":
            self.domaine_count += 1
            self.entry_line = self.line()
            self.entry_depth = self.depth
            self.fields = {}
            self.duplicates = []
        elif local == "DateDeGeneration":
            self.generated_text = []

    def characters(self, content: str) -> None:
        if self.current_field is not None:
            self.text.append(content)
        elif self.generated_text is not None:
            self.generated_text.append(content)

    def endElementNS(self, name: tuple[str | None, str], qname: str | None) -> None:
        namespace, local = name
        self.depth -= 1
        if not self.ours(namespace) or self.depth == 0:
            return
        if self.current_field is not None and self.depth == self.entry_depth:
            value = _clean("".join(self.text))
            if self.current_field in self.fields:
                self.duplicates.append(local)
            self.fields[self.current_field] = value
            self.current_field = None
            self.text = []
        elif self.entry_line is not None and self.depth == self.entry_depth - 1 and local == "Domaine":
            self.finish_entry()
            self.entry_line = None
        elif self.generated_text is not None and local == "DateDeGeneration":
            text = _clean("".join(self.generated_text))
            self.generated_text = None
            try:
                self.generated_at = parse_date(text)
            except ValueError as exc:
                self.warnings.append(f"line {self.line()}: DateDeGeneration: {exc}")

    def reject(self, domain: str | None, reason: str) -> None:
        self.rejected.append(RejectedEntry(line=self.entry_line, domain=domain, reason=reason))

    def finish_entry(self) -> None:
        fields = self.fields
        name = fields.get("nom") or None
        if self.duplicates:
            self.reject(name, f"element(s) given twice: {', '.join(sorted(set(self.duplicates)))}")
            return
        too_long = [key for key, value in fields.items() if len(value) > MAX_FIELD_LENGTH]
        if too_long:
            self.reject(name, f"value longer than {MAX_FIELD_LENGTH} characters in {', '.join(too_long)}")
            return
        if not name:
            self.reject(None, "missing or empty <Nom> (the domain)")
            return
        dn_text = fields.get("dn")
        if not dn_text:
            self.reject(name, "missing or empty <DNCertificatOperateur>")
            return
        try:
            domain = normalize_domain(name)
        except DomainError as exc:
            self.reject(name, f"<Nom>: {exc}")
            return
        try:
            key = dn_key(parse_dn(dn_text))
        except DNSyntaxError as exc:
            self.reject(name, f"<DNCertificatOperateur>: {exc}")
            return
        date_maj: datetime | None = None
        if fields.get("date_maj"):
            try:
                date_maj = parse_date(fields["date_maj"])
            except ValueError as exc:
                self.warnings.append(f"line {self.entry_line} ({name}): DateMAJ: {exc}")
        if (domain, key) in self.seen_keys:
            self.warnings.append(f"line {self.entry_line}: duplicate entry for {name} with the same DN")
            return
        self.seen_keys.add((domain, key))
        self.entries.append(
            TrustEntry(
                domain=domain,
                domain_unicode=unicode_domain(domain),
                operator_dn=dn_text,
                dn_key=key,
                description=fields.get("description") or None,
                responsable_contact=fields.get("responsable") or None,
                support_contact=fields.get("support") or None,
                date_maj=date_maj,
            )
        )


def parse_trust_list(data: bytes) -> TrustList:
    """Parse ANS's XML trust list; raise TrustListError when the document as a whole is unusable.

    Single entries that cannot be used (no `Nom`, no DN, bad domain or DN) are returned in
    `rejected` with their line numbers rather than failing the whole list.
    """
    if not data.strip():
        raise TrustListError("empty document")
    handler = _Handler()
    parser = create_parser(forbid_dtd=False, forbid_entities=True, forbid_external=True)
    parser.setFeature(xml.sax.handler.feature_namespaces, True)
    parser.setFeature(xml.sax.handler.feature_external_ges, False)
    parser.setContentHandler(handler)
    source = xml.sax.xmlreader.InputSource()
    source.setByteStream(BytesIO(data))
    try:
        parser.parse(source)
    except TrustListError:
        raise
    except DefusedXmlException as exc:
        raise TrustListError(
            f"refused: the document declares entities or external references ({exc})"
        ) from None
    except xml.sax.SAXParseException as exc:
        raise TrustListError(
            f"not well-formed XML at line {exc.getLineNumber()}, column {exc.getColumnNumber()}: "
            f"{exc.getMessage()}"
        ) from None
    except (xml.sax.SAXException, ValueError, LookupError) as exc:
        # LookupError: an encoding declaration naming a codec Python does not know.
        raise TrustListError(f"cannot parse the document: {exc}") from None
    if not handler.root_seen:
        raise TrustListError("no root element")
    if handler.domaine_count == 0:
        raise TrustListError("no <Domaine> element: this is not an MSSanté trust list")
    if handler.generated_at is None:
        handler.warnings.append("no usable <DateDeGeneration>")
    return TrustList(
        generated_at=handler.generated_at,
        entries=tuple(handler.entries),
        rejected=tuple(handler.rejected),
        warnings=tuple(handler.warnings),
    )


def _iso(moment: datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.isoformat(timespec="seconds")


def generate_sample_xml(entries: Sequence[tuple[str, str]], generated_at: datetime) -> bytes:
    """A trust list in ANS's format for (domain, operator DN) pairs: demo instances and tests."""
    root = ElementTree.Element(f"{{{NAMESPACE}}}{ROOT_ELEMENT}")
    ElementTree.SubElement(root, f"{{{NAMESPACE}}}DateDeGeneration").text = _iso(generated_at)
    for domain, dn in entries:
        domaine = ElementTree.SubElement(root, f"{{{NAMESPACE}}}Domaine")
        ascii_domain = normalize_domain(domain)
        parse_dn(dn)  # refuse to write a list that could not be read back
        values = {
            "Nom": domain.strip(),
            "Description": f"Sample entry for {unicode_domain(ascii_domain)}",
            "DNCertificatOperateur": dn.strip(),
            "ResponsableContact": f"postmaster@{ascii_domain}",
            "SupportContact": f"support@{ascii_domain}",
            "DateMAJ": _iso(generated_at),
        }
        for tag, value in values.items():
            ElementTree.SubElement(domaine, f"{{{NAMESPACE}}}{tag}").text = value
    ElementTree.indent(root)
    body: bytes = ElementTree.tostring(
        root, encoding="UTF-8", xml_declaration=True, default_namespace=NAMESPACE
    )
    return body + b"\n"
