"""SMTP front ends: the inter-operator inbound listener (mutual TLS) and its reusable pieces.

Pure parts (no I/O): `replies`, `dsn` (RFC 3461 parameters), `address` (RFC 5321 paths),
`data` (DATA stream reader, Received header), `policy` (decisions). Ports the listener needs
from other packages are Protocols in `ports`; the asyncio wire layer is `wire` + `inbound`, and
`service` runs it.
"""
