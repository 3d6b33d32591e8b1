"""Distinguished names: a lenient parser and an equality that matches how DNs are written in practice.

The ANS trust list binds domains to DN strings such as
`CN=smtp.x.fr,OU=1750000018,O=CHU X,ST=Paris (75),C=FR`; those strings are typed by people and
tools, so they come in RFC 4514 order (most specific first), in ASN.1 order (`C=FR,...,CN=...`, as
OpenSSL's `-nameopt` or the `/C=FR/O=.../CN=...` slash form print them), with spaces around `=`
and separators, with `;` separators (RFC 1779/2253), quoted values, `\\XX` escapes or `#hex` BER
values. Two DNs are equal when their RDN sequences are equal after normalisation, read in either
direction:

- attribute types: case-insensitive, aliases resolved (`CN`, `commonName`, `2.5.4.3`, `OID.2.5.4.3`);
- values: Unicode NFKC, case-folded, runs of white space collapsed and trimmed (the spirit of the
  caseIgnoreMatch / RFC 4518 rules that apply to the DirectoryString attributes certificates use);
- a multi-valued RDN (`A=1+B=2`) is a set: the order of its members does not matter.

The order of RDNs otherwise matters (`OU=a,OU=b` differs from `OU=b,OU=a`), except for reading the
whole sequence backwards.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterable

from cryptography import x509

AttributeTypeAndValue = tuple[str, str]
Rdn = tuple[AttributeTypeAndValue, ...]
RdnSequence = tuple[Rdn, ...]
"""RDNs in RFC 4514 order (most specific first); each member is (short name or dotted OID, value)."""

DnLike = str | x509.Name


class DnSyntaxError(ValueError):
    """A DN string that cannot be parsed; the message says where and why."""


# (preferred short name, OID, aliases); aliases are matched case-insensitively.
_ATTRIBUTE_TYPES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("CN", "2.5.4.3", ("commonName",)),
    ("SN", "2.5.4.4", ("surname",)),
    ("serialNumber", "2.5.4.5", ()),
    ("C", "2.5.4.6", ("countryName",)),
    ("L", "2.5.4.7", ("localityName",)),
    ("ST", "2.5.4.8", ("S", "stateOrProvinceName")),
    ("street", "2.5.4.9", ("streetAddress",)),
    ("O", "2.5.4.10", ("organizationName",)),
    ("OU", "2.5.4.11", ("organizationalUnitName",)),
    ("title", "2.5.4.12", ()),
    ("businessCategory", "2.5.4.15", ()),
    ("postalCode", "2.5.4.17", ()),
    ("GN", "2.5.4.42", ("givenName", "G")),
    ("initials", "2.5.4.43", ()),
    ("generationQualifier", "2.5.4.44", ()),
    ("dnQualifier", "2.5.4.46", ()),
    ("pseudonym", "2.5.4.65", ()),
    ("organizationIdentifier", "2.5.4.97", ()),
    ("DC", "0.9.2342.19200300.100.1.25", ("domainComponent",)),
    ("UID", "0.9.2342.19200300.100.1.1", ("userId",)),
    ("emailAddress", "1.2.840.113549.1.9.1", ("E", "email")),
)

_NAME_TO_OID: dict[str, str] = {}
_OID_TO_SHORT: dict[str, str] = {}
for _short, _oid, _aliases in _ATTRIBUTE_TYPES:
    _OID_TO_SHORT[_oid] = _short
    for _alias in (_short, *_aliases):
        _NAME_TO_OID[_alias.lower()] = _oid

_KEYWORD = re.compile(r"[A-Za-z][A-Za-z0-9-]*")
_DOTTED_OID = re.compile(r"(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))+")
_HEX = frozenset("0123456789abcdefABCDEF")
_SPACE = re.compile(r"\s+")


def attribute_oid(attribute_type: str) -> str:
    """The dotted OID for a type name (`CN`, `commonName`, `OID.2.5.4.3`, `2.5.4.3`)."""
    text = attribute_type.strip()
    if text[:4].lower() == "oid.":
        text = text[4:]
    if _DOTTED_OID.fullmatch(text):
        return text
    oid = _NAME_TO_OID.get(text.lower())
    if oid is None:
        raise DnSyntaxError(f"unknown attribute type {attribute_type!r}")
    return oid


def short_name(oid: str) -> str:
    """`CN` for 2.5.4.3; the dotted OID itself for types without a usual short name."""
    return _OID_TO_SHORT.get(oid, oid)


def normalise_value(value: str) -> str:
    """The comparison form of an attribute value (NFKC, case-folded, white space collapsed)."""
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", value).casefold()).strip()


# --- parsing -----------------------------------------------------------------------------------

# BER string types a `#hex` value may carry, decoded so that `CN=#0c03616263` equals `CN=abc`.
_BER_STRING_CODECS = {0x0C: "utf-8", 0x13: "ascii", 0x16: "ascii", 0x14: "latin-1", 0x1E: "utf-16-be"}


def _decode_ber_string(raw: bytes) -> str | None:
    if len(raw) < 2 or raw[0] not in _BER_STRING_CODECS:
        return None
    length = raw[1]
    offset = 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4 or len(raw) < 2 + count:
            return None
        length = int.from_bytes(raw[2 : 2 + count], "big")
        offset = 2 + count
    if offset + length != len(raw):
        return None
    try:
        return raw[offset:].decode(_BER_STRING_CODECS[raw[0]])
    except UnicodeDecodeError:
        return None


class _Parser:
    """RFC 4514 / 2253 / 1779 DN strings, leniently (see the module docstring)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def error(self, message: str) -> DnSyntaxError:
        return DnSyntaxError(f"{message} at position {self.pos} of DN {self.text!r}")

    def skip_spaces(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in " \t\r\n":
            self.pos += 1

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def parse(self) -> RdnSequence:
        rdns: list[Rdn] = []
        self.skip_spaces()
        if self.at_end():
            return ()
        while True:
            rdns.append(self.parse_rdn())
            self.skip_spaces()
            if self.at_end():
                break
            if self.text[self.pos] not in ",;":
                raise self.error(f"expected ',' between RDNs, found {self.text[self.pos]!r}")
            self.pos += 1
        return tuple(rdns)

    def parse_rdn(self) -> Rdn:
        members = [self.parse_attribute()]
        while True:
            self.skip_spaces()
            if self.at_end() or self.text[self.pos] != "+":
                return tuple(members)
            self.pos += 1
            members.append(self.parse_attribute())

    def parse_attribute(self) -> AttributeTypeAndValue:
        self.skip_spaces()
        start = self.pos
        while not self.at_end() and self.text[self.pos] not in "=,;+":
            self.pos += 1
        raw_type = self.text[start : self.pos].strip()
        if self.at_end() or self.text[self.pos] != "=":
            raise self.error(f"expected '=' after attribute type {raw_type!r}")
        if not raw_type:
            raise self.error("missing attribute type before '='")
        candidate = raw_type[4:] if raw_type[:4].lower() == "oid." else raw_type
        if not (_KEYWORD.fullmatch(candidate) or _DOTTED_OID.fullmatch(candidate)):
            raise self.error(f"invalid attribute type {raw_type!r}")
        try:
            oid = attribute_oid(raw_type)
        except DnSyntaxError as exc:
            raise self.error(str(exc)) from None
        self.pos += 1
        self.skip_spaces()
        return short_name(oid), self.parse_value()

    def parse_value(self) -> str:
        if self.at_end():
            return ""
        char = self.text[self.pos]
        if char == "#":
            return self.parse_hex_value()
        if char == '"':
            return self.parse_quoted_value()
        return self.parse_plain_value()

    def parse_hex_value(self) -> str:
        self.pos += 1
        start = self.pos
        while not self.at_end() and self.text[self.pos] in _HEX:
            self.pos += 1
        digits = self.text[start : self.pos]
        if not digits or len(digits) % 2:
            raise self.error("'#' value needs an even, non-zero number of hex digits")
        self.skip_spaces()
        if not self.at_end() and self.text[self.pos] not in ",;+":
            raise self.error(f"unexpected {self.text[self.pos]!r} after '#' value")
        raw = bytes.fromhex(digits)
        decoded = _decode_ber_string(raw)
        return decoded if decoded is not None else "#" + digits.lower()

    def parse_quoted_value(self) -> str:
        self.pos += 1
        out = bytearray()
        while True:
            if self.at_end():
                raise self.error("unterminated quoted value")
            char = self.text[self.pos]
            if char == '"':
                self.pos += 1
                break
            if char == "\\":
                self.parse_escape(out)
                continue
            out += char.encode("utf-8", "surrogatepass")
            self.pos += 1
        self.skip_spaces()
        if not self.at_end() and self.text[self.pos] not in ",;+":
            raise self.error(f"unexpected {self.text[self.pos]!r} after quoted value")
        return self.decode(out)

    def parse_plain_value(self) -> str:
        out = bytearray()
        # Trailing unescaped spaces are not part of the value (RFC 4514 section 3).
        significant_length = 0
        while not self.at_end():
            char = self.text[self.pos]
            if char in ",;+":
                break
            if char == "\\":
                self.parse_escape(out)
                significant_length = len(out)
                continue
            if char == '"':
                raise self.error("unescaped '\"' inside a value")
            out += char.encode("utf-8", "surrogatepass")
            self.pos += 1
            if char not in " \t\r\n":
                significant_length = len(out)
        return self.decode(out[:significant_length])

    def parse_escape(self, out: bytearray) -> None:
        self.pos += 1
        if self.at_end():
            raise self.error("'\\' at the end of the DN")
        char = self.text[self.pos]
        if char in _HEX and self.pos + 1 < len(self.text) and self.text[self.pos + 1] in _HEX:
            out.append(int(self.text[self.pos : self.pos + 2], 16))
            self.pos += 2
            return
        out += char.encode("utf-8", "surrogatepass")
        self.pos += 1

    def decode(self, raw: bytearray) -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.error("escaped bytes are not valid UTF-8") from None


def _split_slash_form(text: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    index = 1
    while index < len(text):
        char = text[index]
        if char == "\\" and index + 1 < len(text):
            current.append(text[index : index + 2])
            index += 2
            continue
        if char == "/":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
        index += 1
    parts.append("".join(current))
    return [part for part in parts if part.strip()]


def parse_dn(text: str) -> RdnSequence:
    """Parse a DN string into RDNs in the order written, with short type names and raw values.

    Accepts RFC 4514/2253/1779 strings and OpenSSL's `/C=FR/O=X/CN=Y` form (returned reversed, i.e.
    in RFC 4514 order). Raises `DnSyntaxError` naming the problem and its position.
    """
    if not isinstance(text, str):
        raise DnSyntaxError(f"a DN must be a string, got {type(text).__name__}")
    # Only leading space: a trailing one may be escaped ("/CN=x\\ "), and the parser drops
    # unescaped trailing spaces itself.
    stripped = text.lstrip()
    if stripped.startswith("/"):
        rdns: list[Rdn] = []
        for part in _split_slash_form(stripped):
            # Inside the slash form ',' is literal; escape it for the RFC 4514 parser.
            rdn = _Parser(re.sub(r"(?<!\\),", r"\\,", part)).parse()
            if len(rdn) != 1:
                raise DnSyntaxError(f"invalid RDN {part!r} in DN {text!r}")
            rdns.append(rdn[0])
        return tuple(reversed(rdns))
    return _Parser(text).parse()


def name_to_rdns(name: x509.Name) -> RdnSequence:
    """A certificate name as RDNs in RFC 4514 order (most specific first)."""
    result: list[Rdn] = []
    for rdn in reversed(name.rdns):
        members: list[AttributeTypeAndValue] = []
        for attribute in rdn:
            value = attribute.value
            text = value if isinstance(value, str) else "#" + bytes(value).hex()
            members.append((short_name(attribute.oid.dotted_string), text))
        result.append(tuple(members))
    return tuple(result)


def _as_rdns(dn: DnLike | RdnSequence) -> RdnSequence:
    if isinstance(dn, x509.Name):
        return name_to_rdns(dn)
    if isinstance(dn, str):
        return parse_dn(dn)
    return dn


NormalisedDn = tuple[tuple[tuple[str, str], ...], ...]


def _normalise(rdns: Iterable[Rdn]) -> NormalisedDn:
    return tuple(
        tuple(sorted((attribute_oid(kind), normalise_value(value)) for kind, value in rdn)) for rdn in rdns
    )


def _canonical(rdns: RdnSequence) -> NormalisedDn:
    forward = _normalise(rdns)
    backward = tuple(reversed(forward))
    return min(forward, backward)


@functools.lru_cache(maxsize=4096)
def _name_key(name: x509.Name) -> NormalisedDn:
    # Certificate names recur on every validation (issuers, CRL issuers): compute each once.
    return _canonical(name_to_rdns(name))


def dn_key(dn: DnLike | RdnSequence) -> NormalisedDn:
    """A hashable canonical form: `dn_key(a) == dn_key(b)` exactly when `dn_equal(a, b)`.

    Use it to index DNs (for instance the trust list's certificate DNs) in a dict.
    """
    if isinstance(dn, x509.Name):
        return _name_key(dn)
    return _canonical(_as_rdns(dn))


def dn_equal(a: DnLike | RdnSequence, b: DnLike | RdnSequence) -> bool:
    """True when two DNs name the same entry (see the module docstring for the rules).

    A string that cannot be parsed raises `DnSyntaxError`.
    """
    return dn_key(a) == dn_key(b)


def _escape(value: str) -> str:
    out: list[str] = []
    for index, char in enumerate(value):
        if (
            char in ',+"\\<>;='
            or (char == "#" and index == 0)
            or (char == " " and (index == 0 or index == len(value) - 1))
        ):
            out.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\{ord(char):02x}")
        else:
            out.append(char)
    return "".join(out)


def format_dn(rdns: RdnSequence) -> str:
    """RFC 4514 string for RDNs in RFC 4514 order."""
    return ",".join("+".join(f"{kind}={_escape(value)}" for kind, value in rdn) for rdn in rdns)
