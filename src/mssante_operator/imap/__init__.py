"""IMAP front end: a sans-IO protocol core, driven by an asyncio layer and a store backend.

Modules:
- `parser`: incremental command parser (bytes in, typed `commands` events out; literals, LITERAL+,
  literal8, bounded sizes, BAD events that never lose synchronisation);
- `commands`: the event and command dataclasses, SEARCH key tree, FETCH items;
- `response`: response serializer (status lines, codes, untagged data, FETCH in chunks);
- `mutf7`, `sequence`: mailbox name encoding and sequence-set arithmetic;
- `mime`: ENVELOPE, BODYSTRUCTURE and byte-exact BODY[section] extraction;
- `search`, `sort`: SEARCH evaluation in Python (for what SQL cannot see: encrypted bodies), SORT and
  THREAD;
- `backend`: the `MailboxBackend` Protocol the store implements, and its data types;
- `session`: the per-connection state machine;
- `driver`: a reference asyncio loop moving bytes between a stream and a session (used by the tests
  with real clients; the production server can build on it).

Design choice for the session: it is an *async coordinator that never touches a socket* rather than
a pure action/result machine. Every store access goes through the `MailboxBackend` Protocol (async,
batched), and the session yields what to send (`bytes`) or what only the driver can do (`Action`:
`UpgradeTLS`, `CloseConnection`). Returning "actions" for each store call would have turned every
command into a hand-written continuation; an async generator keeps each command readable while
the socket stays outside. The driver loop is:

    session = Session(backend_for_this_connection, ConnectionInfo(peer, tls=...), config)
    # (this is what driver.serve_connection does)
    write(session.greeting())
    while data := await read():
        session.feed(data)
        async for out in session.process():
            if isinstance(out, bytes):  write(out); await drain()      # FETCH bodies arrive in chunks
            elif isinstance(out, UpgradeTLS): await start_tls(); session.tls_started(new_conn_info)
            elif isinstance(out, CloseConnection): close(); return
        # while session.idling: wait for the next read OR a store change notification, and on a
        # notification write every line of `await session.poll_updates()`.

Timeouts (auto-logout, IDLE) belong to the driver; the consecutive-bad-command limit is enforced
by the session (`SessionConfig.max_bad_commands`).
"""
