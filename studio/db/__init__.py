"""The database layer shared by every feature: `database.py` (connection wrapper for SQLite or
PostgreSQL, sessions, NOTIFY/LISTEN, numbered migrations) and `migrations/` (one SQL file per
schema version, plus `NNNN_name.postgresql.sql` where PostgreSQL needs other DDL). Feature
packages keep their own ORM rows and stores."""
