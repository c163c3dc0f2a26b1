-- Many workers on one database (issue 14): which processes are alive, and which model a job
-- needs (a worker prefers jobs for the model it already holds).
--
-- One row per process that runs jobs (a studio with its in-process worker, a Ray actor),
-- refreshed every few seconds. A running job belongs to a dead process when the row of its
-- worker's process is stale, or, on the same host, when that pid is gone or was reused
-- (process_start differs): only such jobs are recovered, never another live process's.
CREATE TABLE workers (
    name TEXT PRIMARY KEY,                    -- host:pid
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    process_start {FLOAT} NOT NULL,           -- the process's start (clock ticks since boot)
    started_at {TIMESTAMP} NOT NULL,
    heartbeat_at {TIMESTAMP} NOT NULL
);
ALTER TABLE jobs ADD COLUMN model TEXT NOT NULL DEFAULT '';  -- params' model, '' = the default
