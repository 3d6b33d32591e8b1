"""The ANS trust list: parse, import, refresh, and the DN ↔ domain decisions.

Public API (other packages import from here):
- `TrustStore(sessions)`: cached look-ups (`entries_for`, `is_trusted_domain`, `any_entry_for_dn`, `stats`)
- `inbound_peer_decision`, `outbound_domain_decision`, `outbound_peer_decision` -> `TrustDecision`
- `import_trust_list`, `refresh_trust_list`, `TrustRefresher` (a `serve` service), `trust_health`
- `parse_trust_list`, `generate_sample_xml`, `install_sample_list` (for `init`), `certificate_subject`
- `dn_matches`, `dn_key`, `parse_dn` (to be merged with the `pki` package's DN helpers)
"""

from mssante_operator.trust.decisions import (
    TrustDecision,
    inbound_peer_decision,
    outbound_domain_decision,
    outbound_peer_decision,
)
from mssante_operator.trust.entries import (
    DomainError,
    RejectedEntry,
    TrustEntry,
    TrustList,
    domain_of,
    normalize_domain,
    unicode_domain,
)
from mssante_operator.trust.fetch import FetchResult, TrustFetchError, fetch_trust_list, refresh_trust_list
from mssante_operator.trust.importer import (
    ImportOutcome,
    ImportResult,
    SnapshotInfo,
    current_snapshot,
    import_trust_list,
)
from mssante_operator.trust.names import DNSyntaxError, dn_key, dn_matches, parse_dn
from mssante_operator.trust.refresher import TrustRefresher
from mssante_operator.trust.sample import certificate_subject, install_sample_list
from mssante_operator.trust.store import TrustStats, TrustStore, trust_health
from mssante_operator.trust.xml import TrustListError, generate_sample_xml, parse_trust_list

__all__ = [
    "DNSyntaxError",
    "DomainError",
    "FetchResult",
    "ImportOutcome",
    "ImportResult",
    "RejectedEntry",
    "SnapshotInfo",
    "TrustDecision",
    "TrustEntry",
    "TrustFetchError",
    "TrustList",
    "TrustListError",
    "TrustRefresher",
    "TrustStats",
    "TrustStore",
    "certificate_subject",
    "current_snapshot",
    "dn_key",
    "dn_matches",
    "domain_of",
    "fetch_trust_list",
    "generate_sample_xml",
    "import_trust_list",
    "inbound_peer_decision",
    "install_sample_list",
    "normalize_domain",
    "outbound_domain_decision",
    "outbound_peer_decision",
    "parse_dn",
    "parse_trust_list",
    "refresh_trust_list",
    "trust_health",
    "unicode_domain",
]
