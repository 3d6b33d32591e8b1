"""Client authentication shared by submission and IMAP: SASL, bearer tokens, rate limits, identities."""
