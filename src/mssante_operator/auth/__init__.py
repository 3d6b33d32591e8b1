"""Client authentication shared by submission and IMAP: SASL, bearer tokens, rate limits, identities.

Wire layers use `SaslExchange` to decode a client's SASL lines, `Authenticator.authenticate` to check
the credentials it yields, `may_send_as` for MAIL FROM / From:, and `advertised_mechanisms` for
the EHLO / CAPABILITY lists.
"""

from mssante_operator.auth.authenticator import (
    PUBLIC_FAILURE,
    PUBLIC_RATE_LIMITED,
    PUBLIC_TEMPORARY,
    Authenticator,
    AuthIdentity,
    AuthMethod,
    AuthResult,
    ClientContext,
    Decision,
    MailboxDirectory,
    advertised_mechanisms,
    may_send_as,
)
from mssante_operator.auth.ratelimit import MemoryRateLimiter, RateKey, RateLimiter
from mssante_operator.auth.sasl import (
    Abort,
    BearerCredentials,
    Challenge,
    Credentials,
    ExternalCredentials,
    Failed,
    Malformed,
    Mechanism,
    PasswordCredentials,
    SaslEvent,
    SaslExchange,
    UnsupportedMechanism,
)
from mssante_operator.auth.tokens import BearerTokenValidator, TokenError, TokenIdentity, TokenRefusal

__all__ = [
    "PUBLIC_FAILURE",
    "PUBLIC_RATE_LIMITED",
    "PUBLIC_TEMPORARY",
    "Abort",
    "AuthIdentity",
    "AuthMethod",
    "AuthResult",
    "Authenticator",
    "BearerCredentials",
    "BearerTokenValidator",
    "Challenge",
    "ClientContext",
    "Credentials",
    "Decision",
    "ExternalCredentials",
    "Failed",
    "MailboxDirectory",
    "Malformed",
    "Mechanism",
    "MemoryRateLimiter",
    "PasswordCredentials",
    "RateKey",
    "RateLimiter",
    "SaslEvent",
    "SaslExchange",
    "TokenError",
    "TokenIdentity",
    "TokenRefusal",
    "UnsupportedMechanism",
    "advertised_mechanisms",
    "may_send_as",
]
