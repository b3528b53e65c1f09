"""SQLite schema, migrations and plain functions over one APSW connection (owned by the tracker)."""
