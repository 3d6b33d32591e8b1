"""SMTP front ends: the inter-operator inbound listener (mutual TLS) and its reusable pieces.

Pure parts (no I/O): `replies`, `dsn` (RFC 3461 parameters), `address` (RFC 5321 paths),
`data` (DATA stream reader, Received header), `policy` (decisions). Ports the listener needs
from other packages are Protocols in `ports`; the asyncio wire layer is `wire` + `inbound`, and
`service` runs it.

Client submission (RFC 6409) reuses them: `message` (pure: Date/Message-ID, From:, X-MSS-NIL),
`submission_ports`, the session in `submission` (SASL AUTH, sender and recipient policy) and
`submission_service` (the STARTTLS and implicit TLS listeners).
"""
