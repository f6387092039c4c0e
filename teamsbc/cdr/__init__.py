"""Call detail records: one row per call, written as the call happens, off the event loop.

- settings.py: the `cdr:` section (CdrSettings, parse_cdr)
- store.py: the SQLite schema, migrations and CdrStore (writes in batches, reads apart)
- writer.py: CdrWriter (the thread that owns the writes) and CdrObserver (events -> queue)
- cli.py: `teamsbc cdr` (table, CSV, JSON; read-only)

Nothing is imported here: the config reads `cdr.settings` without loading the rest.
"""
