"""IMAP front end (placeholder docstring, completed below)."""
