"""Distinguished names compared by parsed RDN sequence, never by string.

The trust list writes a DN as free text (`CN=smtp.op.fr,OU=...,O=...,ST=Paris (75),C=FR`, sometimes
with spaces after commas, `C=FR` first, `\\,` or `\\2C` escapes, quoted values); a certificate carries
an `x509.Name`. Both become a tuple of RDNs, each a frozenset of (attribute OID, normalised value), in
RFC 4514 order (most specific first). Two DNs match when their RDN sequences are equal read in the same
direction or in opposite directions: the direction is how the DN was written, not what it names.
Attribute order inside a multi-valued RDN does not matter. Values are compared per RFC 4518's
caseIgnoreMatch (NFKC, case folded, insignificant spaces removed).

`cryptography`'s own RFC 4514 parser is too strict for this list (no space after a comma, upper-case
names only, 64-character CN limit, no quoting), so the text side is parsed here; attribute OIDs are
`cryptography`'s.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import unicodedata
from typing import Final

from cryptography import x509
from cryptography.x509.oid import NameOID, ObjectIdentifier

RDN = frozenset[tuple[str, str]]
ParsedDN = tuple[RDN, ...]
DNLike = str | x509.Name | ParsedDN

MAX_DN_LENGTH: Final = 4096


class DNSyntaxError(ValueError):
    """A DN string that cannot be parsed; the message names the position and the problem."""


_NAMES: Final[dict[str, ObjectIdentifier]] = {
    "CN": NameOID.COMMON_NAME,
    "COMMONNAME": NameOID.COMMON_NAME,
    "C": NameOID.COUNTRY_NAME,
    "COUNTRYNAME": NameOID.COUNTRY_NAME,
    "L": NameOID.LOCALITY_NAME,
    "LOCALITYNAME": NameOID.LOCALITY_NAME,
    "ST": NameOID.STATE_OR_PROVINCE_NAME,
    "S": NameOID.STATE_OR_PROVINCE_NAME,
    "STATEORPROVINCENAME": NameOID.STATE_OR_PROVINCE_NAME,
    "O": NameOID.ORGANIZATION_NAME,
    "ORGANIZATIONNAME": NameOID.ORGANIZATION_NAME,
    "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "ORGANIZATIONALUNITNAME": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "STREET": NameOID.STREET_ADDRESS,
    "STREETADDRESS": NameOID.STREET_ADDRESS,
    "DC": NameOID.DOMAIN_COMPONENT,
    "DOMAINCOMPONENT": NameOID.DOMAIN_COMPONENT,
    "UID": NameOID.USER_ID,
    "USERID": NameOID.USER_ID,
    "SN": NameOID.SURNAME,
    "SURNAME": NameOID.SURNAME,
    "GN": NameOID.GIVEN_NAME,
    "G": NameOID.GIVEN_NAME,
    "GIVENNAME": NameOID.GIVEN_NAME,
    "SERIALNUMBER": NameOID.SERIAL_NUMBER,
    "E": NameOID.EMAIL_ADDRESS,
    "EMAIL": NameOID.EMAIL_ADDRESS,
    "EMAILADDRESS": NameOID.EMAIL_ADDRESS,
    "T": NameOID.TITLE,
    "TITLE": NameOID.TITLE,
    "INITIALS": NameOID.INITIALS,
    "PSEUDONYM": NameOID.PSEUDONYM,
    "GENERATIONQUALIFIER": NameOID.GENERATION_QUALIFIER,
    "DNQUALIFIER": NameOID.DN_QUALIFIER,
    "POSTALCODE": NameOID.POSTAL_CODE,
    "BUSINESSCATEGORY": NameOID.BUSINESS_CATEGORY,
    "ORGANIZATIONIDENTIFIER": NameOID.ORGANIZATION_IDENTIFIER,
}

_OID_RE: Final = re.compile(r"[0-2](?:\.(?:0|[1-9][0-9]*))+")
_TYPE_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9-]*|[0-9][0-9.]*")
_HEX_RE: Final = re.compile(r"[0-9A-Fa-f]{2}")
_HEX_RUN_RE: Final = re.compile(r"(?:[0-9A-Fa-f]{2})+")
# Runs of value characters needing no attention, for each set of stop characters.
_PLAIN_RUNS: Final = {
    ",;+": re.compile(r'[^,;+\\"]+'),
    "+": re.compile(r'[^+\\"]+'),
}
_SIMPLE_ASCII: Final = re.compile(r"[\x20-\x7e]*")
# Characters RFC 4518 maps to nothing (soft hyphen, zero-width joiners, BOM, variation selectors...).
_MAPPED_TO_NOTHING: Final = re.compile("[\u00ad\u034f\u180b-\u180d\u200b-\u200d\u2060\ufe00-\ufe0f\ufeff]")
_SPACES: Final = re.compile(r"\s+")

# DER string types that may appear in a `#hex` value (RFC 4514 section 2.4).
_DER_STRING_CODECS: Final[dict[int, str]] = {
    0x0C: "utf-8",  # UTF8String
    0x13: "ascii",  # PrintableString
    0x16: "ascii",  # IA5String
    0x14: "latin-1",  # TeletexString (in practice Latin-1)
    0x1A: "ascii",  # VisibleString
    0x1E: "utf-16-be",  # BMPString
    0x1C: "utf-32-be",  # UniversalString
}


def attribute_oid(name: str) -> str:
    """The dotted OID of an attribute type written as a short name, `OID.n.n` or `n.n`."""
    text = name.strip()
    if text.upper().startswith("OID."):
        text = text[4:]
    if _OID_RE.fullmatch(text):
        return text
    oid = _NAMES.get(text.upper())
    if oid is None:
        raise DNSyntaxError(f"unknown attribute type {name.strip()!r}")
    return oid.dotted_string


def normalize_value(value: str) -> str:
    """RFC 4518-style caseIgnoreMatch preparation: NFKC, case fold, insignificant spaces removed."""
    if _SIMPLE_ASCII.fullmatch(value):
        # The common case; NFKC and the mapping tables change nothing in printable ASCII.
        return _SPACES.sub(" ", value.lower()).strip()
    text = _MAPPED_TO_NOTHING.sub("", value)
    text = "".join(ch for ch in text if not unicodedata.category(ch).startswith("C") or ch.isspace())
    text = unicodedata.normalize("NFKC", text).casefold()
    return _SPACES.sub(" ", text).strip()


def _decode_der_string(hex_text: str, position: int) -> str:
    try:
        raw = bytes.fromhex(hex_text)
    except ValueError:
        raise DNSyntaxError(f"bad hex value at position {position}: {hex_text!r}") from None
    if len(raw) < 2:
        raise DNSyntaxError(f"hex value too short at position {position}")
    tag, length, offset = raw[0], raw[1], 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4 or len(raw) < 2 + count:
            raise DNSyntaxError(f"bad DER length in hex value at position {position}")
        length = int.from_bytes(raw[2 : 2 + count], "big")
        offset = 2 + count
    content = raw[offset:]
    if len(content) != length:
        raise DNSyntaxError(f"DER length does not match the hex value at position {position}")
    codec = _DER_STRING_CODECS.get(tag)
    if codec is None:
        # Not a string type: compare the encoding itself.
        return "#" + raw.hex()
    try:
        return content.decode(codec)
    except UnicodeDecodeError:
        raise DNSyntaxError(f"hex value at position {position} is not valid {codec}") from None


class _Parser:
    """A lenient RFC 4514 / RFC 2253 reader: `,` or `;` between RDNs, spaces around separators,
    quoted values, `\\c` and `\\hh` escapes, `#hex` BER values."""

    def __init__(self, text: str, *, stops: str = ",;+") -> None:
        self.text = text
        self.pos = 0
        # Characters that end an unquoted value: `,;+` normally, only `+` inside a `/`-form RDN.
        self.stops = stops

    def error(self, message: str) -> DNSyntaxError:
        return DNSyntaxError(f"{message} at position {self.pos} of {self.text!r}")

    def skip_spaces(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in " \t\r\n":
            self.pos += 1

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def parse(self) -> ParsedDN:
        rdns: list[RDN] = []
        self.skip_spaces()
        if self.at_end():
            raise DNSyntaxError("empty DN")
        while True:
            rdns.append(self.rdn())
            self.skip_spaces()
            if self.at_end():
                return tuple(rdns)
            if self.text[self.pos] in ",;":
                self.pos += 1
                self.skip_spaces()
                if self.at_end():
                    raise self.error("DN ends with a separator")
                continue
            raise self.error(f"unexpected character {self.text[self.pos]!r}")

    def rdn(self) -> RDN:
        pairs: list[tuple[str, str]] = []
        while True:
            self.skip_spaces()
            pairs.append(self.attribute())
            self.skip_spaces()
            if not self.at_end() and self.text[self.pos] == "+":
                self.pos += 1
                continue
            break
        rdn = frozenset(pairs)
        if len(rdn) != len(pairs):
            raise self.error("the same attribute value appears twice in one RDN")
        return rdn

    def rdn_only(self) -> RDN:
        rdn = self.rdn()
        self.skip_spaces()
        if not self.at_end():
            raise self.error(f"unexpected character {self.text[self.pos]!r}")
        return rdn

    def attribute(self) -> tuple[str, str]:
        start = self.pos
        if self.text[start : start + 4].upper() == "OID.":
            self.pos += 4
        match = _TYPE_RE.match(self.text, self.pos)
        if match is None:
            raise self.error("expected an attribute type")
        self.pos = match.end()
        type_text = self.text[start : self.pos]
        self.skip_spaces()
        if self.at_end() or self.text[self.pos] != "=":
            raise self.error(f"expected '=' after attribute type {type_text!r}")
        self.pos += 1
        self.skip_spaces()
        oid = attribute_oid(type_text)
        return oid, normalize_value(self.value())

    def value(self) -> str:
        if self.at_end():
            return ""
        first = self.text[self.pos]
        if first == "#":
            start = self.pos
            self.pos += 1
            match = _HEX_RUN_RE.match(self.text, self.pos)
            if match is None:
                raise self.error("expected hex digits after '#'")
            self.pos = match.end()
            return _decode_der_string(match.group(0), start)
        if first == '"':
            return self.quoted()
        return self.plain()

    def escape(self, out: bytearray) -> None:
        # self.pos is on the backslash.
        self.pos += 1
        if self.at_end():
            raise self.error("DN ends with a lone backslash")
        pair = self.text[self.pos : self.pos + 2]
        if _HEX_RE.fullmatch(pair):
            out.append(int(pair, 16))
            self.pos += 2
            return
        out.extend(self.text[self.pos].encode("utf-8"))
        self.pos += 1

    def quoted(self) -> str:
        self.pos += 1
        out = bytearray()
        while True:
            if self.at_end():
                raise self.error("unterminated quoted value")
            ch = self.text[self.pos]
            if ch == '"':
                self.pos += 1
                return self.decode(out)
            if ch == "\\":
                self.escape(out)
                continue
            out.extend(ch.encode("utf-8"))
            self.pos += 1

    def plain(self) -> str:
        out = bytearray()
        run = _PLAIN_RUNS[self.stops]
        while not self.at_end():
            match = run.match(self.text, self.pos)
            if match is not None:
                out.extend(match.group(0).encode("utf-8"))
                self.pos = match.end()
                continue
            ch = self.text[self.pos]
            if ch in self.stops:
                break
            if ch == "\\":
                self.escape(out)
                continue
            raise self.error("unescaped '\"' inside a value")
        # Unescaped trailing spaces are not part of the value; normalisation drops them anyway.
        return self.decode(out)

    def decode(self, raw: bytearray) -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.error("escaped bytes are not valid UTF-8") from None


def _parse_slash_form(text: str) -> ParsedDN:
    """OpenSSL's `/C=FR/O=.../CN=...` one-line form (most general first)."""
    parts = re.split(r"(?<!\\)/", text[1:])
    if any(not part.strip() for part in parts):
        raise DNSyntaxError(f"empty RDN in {text!r}")
    rdns = [_Parser(part, stops="+").rdn_only() for part in parts]
    return tuple(reversed(rdns))


# `type=value` pairs with nothing to unescape, between `,` or `;`: what the trust list almost always has.
_SIMPLE_DN: Final = re.compile(
    r"[ \t\r\n]*[A-Za-z][A-Za-z0-9-]*[ \t\r\n]*=[^,;+\\\"#=]*"
    r"(?:[,;][ \t\r\n]*[A-Za-z][A-Za-z0-9-]*[ \t\r\n]*=[^,;+\\\"#=]*)*"
)


def _parse_simple(text: str) -> ParsedDN:
    rdns: list[RDN] = []
    for part in re.split(r"[,;]", text):
        name, _, value = part.partition("=")
        rdns.append(frozenset({(attribute_oid(name), normalize_value(value))}))
    return tuple(rdns)


def parse_dn(text: str) -> ParsedDN:
    """Parse a DN string into RDNs in RFC 4514 order (most specific first); raise DNSyntaxError."""
    if len(text) > MAX_DN_LENGTH:
        raise DNSyntaxError(f"DN longer than {MAX_DN_LENGTH} characters")
    if _SIMPLE_DN.fullmatch(text):
        return _parse_simple(text)
    # Only leading spaces: a trailing one may be escaped (`CN=a\ `).
    stripped = text.lstrip()
    if stripped.startswith("/"):
        return _parse_slash_form(stripped)
    return _Parser(stripped).parse()


def name_to_rdns(name: x509.Name) -> ParsedDN:
    """An `x509.Name` (a certificate's subject) as normalised RDNs in RFC 4514 order."""
    rdns: list[RDN] = []
    for rdn in reversed(name.rdns):
        pairs: set[tuple[str, str]] = set()
        for attribute in rdn:
            value = attribute.value
            text = "#" + value.hex() if isinstance(value, bytes) else normalize_value(value)
            pairs.add((attribute.oid.dotted_string, text))
        rdns.append(frozenset(pairs))
    return tuple(rdns)


def as_rdns(dn: DNLike) -> ParsedDN:
    """Parse whatever form a DN comes in; raise DNSyntaxError for a bad string."""
    if isinstance(dn, x509.Name):
        return name_to_rdns(dn)
    if isinstance(dn, str):
        return parse_dn(dn)
    return dn


def _serialize(rdns: ParsedDN) -> str:
    return json.dumps([sorted(rdn) for rdn in rdns], ensure_ascii=False, separators=(",", ":"))


def canonical_dn(dn: DNLike) -> str:
    """A canonical text for the DN, the same for both writing directions."""
    rdns = as_rdns(dn)
    return min(_serialize(rdns), _serialize(tuple(reversed(rdns))))


@functools.lru_cache(maxsize=8192)
def _cached_key(dn: str | x509.Name) -> str:
    return hashlib.sha256(canonical_dn(dn).encode("utf-8")).hexdigest()


def dn_key(dn: DNLike) -> str:
    """A 64-hex-digit key: equal for two DNs exactly when `dn_matches` says they match.

    Peers present the same few certificates over and over, so keys of strings and `x509.Name`s are
    cached.
    """
    if isinstance(dn, str | x509.Name):
        return _cached_key(dn)
    return hashlib.sha256(canonical_dn(dn).encode("utf-8")).hexdigest()


def dn_matches(a: DNLike, b: DNLike) -> bool:
    """True when both name the same entity; a DN string that does not parse matches nothing."""
    try:
        left, right = as_rdns(a), as_rdns(b)
    except DNSyntaxError:
        return False
    return left == right or left == tuple(reversed(right))
