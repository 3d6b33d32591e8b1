"""Account policy: which mailboxes may exist, whose they are, and their passwords. Pure functions."""

from mssante_operator.accounts.passwords import (
    PasswordError,
    PasswordHashError,
    check_password,
    hash_password,
    needs_rehash,
    verify_password,
)
from mssante_operator.accounts.validation import (
    AccountError,
    Decision,
    MailboxOwner,
    NewMailbox,
    parse_mailbox_type,
    parse_size,
    password_allowed,
    status_change,
    validate_address,
    validate_display_name,
    validate_new_mailbox,
    validate_owner,
)

__all__ = [
    "AccountError",
    "Decision",
    "MailboxOwner",
    "NewMailbox",
    "PasswordError",
    "PasswordHashError",
    "check_password",
    "hash_password",
    "needs_rehash",
    "parse_mailbox_type",
    "parse_size",
    "password_allowed",
    "status_change",
    "validate_address",
    "validate_display_name",
    "validate_new_mailbox",
    "validate_owner",
    "verify_password",
]
