"""Call detail records: one row per call, written as the call happens, off the event loop.

- settings.py: the `cdr:` section (CdrSettings)
- store.py: the SQLite schema, migrations and CdrStore (writes in batches, reads apart)
- writer.py: CdrWriter (the thread that owns the writes) and CdrObserver (events -> queue)
- cli.py: `teamsbc cdr` (table, CSV, JSON; read-only)
"""
from .settings import CdrError, CdrSettings, parse_settings, settings_from_config_file
from .store import COLUMNS, MIGRATIONS, SCHEMA_VERSION, CdrStore, media_columns
from .writer import CdrObserver, CdrWriter

__all__ = ["CdrError", "CdrSettings", "parse_settings", "settings_from_config_file", "COLUMNS",
           "MIGRATIONS", "SCHEMA_VERSION", "CdrStore", "media_columns", "CdrObserver", "CdrWriter"]
