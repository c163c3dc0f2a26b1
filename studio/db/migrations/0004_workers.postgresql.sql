-- PostgreSQL form of 0004_workers.sql.
CREATE TABLE workers (
    name TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    process_start DOUBLE PRECISION NOT NULL,
    started_at TIMESTAMP NOT NULL,
    heartbeat_at TIMESTAMP NOT NULL
);
ALTER TABLE jobs ADD COLUMN model TEXT NOT NULL DEFAULT '';
