"""The database layer shared by every feature: `database.py` (connection wrapper for SQLite or
PostgreSQL, sessions, NOTIFY/LISTEN, numbered migrations) and `migrations/` (one SQL file per
schema version for both databases: placeholders for the type names that differ, `-- if <dialect>`
blocks for what only one has). Feature
packages keep their own ORM rows and stores."""
