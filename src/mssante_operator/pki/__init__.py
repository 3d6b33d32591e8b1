"""IGC-Santé certificates: identities, chain/CRL validation, TLS contexts and a dev PKI.

Import from the submodules (`pki.identity`, `pki.validation`, `pki.tls`, `pki.loading`, `pki.dn`,
`pki.devpki`); the most used names are re-exported here.
"""

from mssante_operator.pki.dn import DnSyntaxError, dn_equal, dn_key, parse_dn
from mssante_operator.pki.identity import CertificateIdentity, IdentityKind, identity_from_certificate
from mssante_operator.pki.loading import PkiLoadError, load_certificates, load_crls
from mssante_operator.pki.tls import client_tls_context, peer_certificate, server_tls_context
from mssante_operator.pki.validation import CertificateValidator, RefusalReason, Usage, ValidationResult

__all__ = [
    "CertificateIdentity",
    "CertificateValidator",
    "DnSyntaxError",
    "IdentityKind",
    "PkiLoadError",
    "RefusalReason",
    "Usage",
    "ValidationResult",
    "client_tls_context",
    "dn_equal",
    "dn_key",
    "identity_from_certificate",
    "load_certificates",
    "load_crls",
    "parse_dn",
    "peer_certificate",
    "server_tls_context",
]
