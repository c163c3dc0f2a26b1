"""The database layer shared by every feature: `database.py` (connection wrapper, sessions,
numbered migrations) and `migrations/` (one SQL file per schema version, gallery, chat and
queue tables alike). Feature packages keep their own ORM rows and stores."""
