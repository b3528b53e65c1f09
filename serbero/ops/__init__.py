"""Read-only operator views of the database (BEY-10): status, dispute list, one dispute's timeline.

Nothing here writes, migrates or needs the daemon: every view opens its own read-only
connection, tolerates a reference (v5) database without our v6 tables, and never shows
rationale text, DM bodies, chat content or the parties' keys.
"""
