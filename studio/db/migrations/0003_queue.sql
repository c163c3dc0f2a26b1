-- The persistent batch queue (issue 6). One row per job; the job's full request is stored as
-- JSON so that it can be rerun after a restart exactly as it was asked for. Times are UTC,
-- ISO text (SQLAlchemy DateTime), like the gallery's.
CREATE TABLE jobs (
    id {ID},
    task TEXT NOT NULL,                       -- task name in studio.tasks (txt2img, chat...)
    engine TEXT NOT NULL,                     -- engine kind the task runs on
    params_json TEXT NOT NULL,                -- the task's parameters, as enqueued
    label TEXT NOT NULL DEFAULT '',           -- short text for lists (the prompt, usually)
    status TEXT NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'running', 'completed', 'failed', 'canceled', 'paused')),
    priority INTEGER NOT NULL DEFAULT 0,      -- higher runs first
    position {FLOAT} NOT NULL,                -- order within a priority; lower runs first
    progress {FLOAT} NOT NULL DEFAULT 0,      -- 0..1 of the running job
    message TEXT NOT NULL DEFAULT '',         -- the engine's last progress message
    error TEXT,                               -- why it failed or was canceled
    attempts INTEGER NOT NULL DEFAULT 0,      -- times a worker took it (crashes count)
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    worker TEXT,                              -- which worker runs / ran it
    result_json TEXT,                         -- TaskResult.info and text, when it completed
    created_at {TIMESTAMP} NOT NULL,
    started_at {TIMESTAMP},
    finished_at {TIMESTAMP},
    heartbeat_at {TIMESTAMP}                  -- last progress report of a running job
);
-- Dequeue: next pending job by priority, then position (then id).
CREATE INDEX ix_jobs_dequeue ON jobs(status, priority DESC, position, id);
CREATE INDEX ix_jobs_position ON jobs(position);  -- new jobs go after the last one
CREATE INDEX ix_jobs_finished ON jobs(finished_at);

-- Gallery items a job produced. Both sides cascade: clearing finished jobs keeps the images,
-- deleting an image from the gallery removes only its link.
CREATE TABLE job_items (
    job_id INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    item_id INTEGER NOT NULL REFERENCES items(id) ON DELETE CASCADE,
    PRIMARY KEY (job_id, item_id)
);
CREATE INDEX ix_job_items_item ON job_items(item_id);

-- Queue-wide switches that must survive a restart (paused or not).
CREATE TABLE queue_state (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
