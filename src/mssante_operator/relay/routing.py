"""Where to deliver a recipient domain: a configured transport map first, DNS MX otherwise."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

import dns.asyncresolver
import dns.exception
import dns.resolver


class RouteSource(StrEnum):
    TRANSPORT_MAP = "transport-map"
    MX = "mx"
    IMPLICIT_MX = "a-record"


@dataclass(frozen=True)
class RouteHop:
    host: str
    port: int
    preference: int
    source: RouteSource


class RoutingError(Exception):
    """No route. `permanent` tells whether to bounce now (null MX, NXDOMAIN) or retry later."""

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


def parse_transport(value: str, *, default_port: int = 25) -> tuple[str, int]:
    """'host', 'host:port' or '[v6]:port' as written in the transport map."""
    text = value.strip()
    if not text:
        raise ValueError("empty transport destination")
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host, port_text = text, ""
    if not host:
        raise ValueError(f"transport destination without a host: {value!r}")
    port = default_port
    if port_text:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise ValueError(f"transport destination with a bad port: {value!r}")
        port = int(port_text)
    return host.lower(), port


def transport_lookup(domain: str, transport_map: Mapping[str, str]) -> RouteHop | None:
    """Exact domain first, then `.parent` entries (Postfix-style), nearest parent first."""
    name = domain.lower().rstrip(".")
    if name in transport_map:
        host, port = parse_transport(transport_map[name])
        return RouteHop(host, port, 0, RouteSource.TRANSPORT_MAP)
    labels = name.split(".")
    for index in range(1, len(labels)):
        key = "." + ".".join(labels[index:])
        if key in transport_map:
            host, port = parse_transport(transport_map[key])
            return RouteHop(host, port, 0, RouteSource.TRANSPORT_MAP)
    return None


def order_mx(records: Sequence[tuple[int, str]], port: int = 25) -> list[RouteHop]:
    """MX records by preference (RFC 5321 5.1); a null MX (RFC 7505) means 'accepts no mail'."""
    hops = [RouteHop(host.lower().rstrip("."), port, pref, RouteSource.MX) for pref, host in records]
    if any(hop.host == "" for hop in hops):
        raise RoutingError("domain publishes a null MX (RFC 7505): it accepts no mail", permanent=True)
    return sorted(hops, key=lambda hop: (hop.preference, hop.host))


async def resolve_route(
    domain: str,
    transport_map: Mapping[str, str],
    *,
    resolver: dns.asyncresolver.Resolver | None = None,
    port: int = 25,
) -> list[RouteHop]:
    """Hops to try in order for `domain`."""
    fixed = transport_lookup(domain, transport_map)
    if fixed is not None:
        return [fixed]
    res = resolver or dns.asyncresolver.Resolver()
    try:
        answer = await res.resolve(domain, "MX")
    except dns.resolver.NXDOMAIN:
        raise RoutingError(f"domain {domain} does not exist (NXDOMAIN)", permanent=True) from None
    except dns.resolver.NoAnswer:
        # RFC 5321 5.1: no MX means the domain itself is the mail host.
        return [RouteHop(domain.lower(), port, 0, RouteSource.IMPLICIT_MX)]
    except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
        raise RoutingError(f"DNS lookup for {domain} MX failed: {exc}", permanent=False) from None
    records = [(int(r.preference), r.exchange.to_text(omit_final_dot=True)) for r in answer]
    if any(str(r.exchange) == "." for r in answer):
        records = [(p, "") for p, _ in records]
    return order_mx(records, port)
