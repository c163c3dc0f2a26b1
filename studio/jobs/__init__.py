"""The persistent batch queue: jobs are SQLite rows (models.py, store.py), a worker per device
runs them through studio.tasks (worker.py), JobQueue is what the UI and the APIs use (queue.py),
and expand.py turns prompt templates and uploaded files into many jobs."""
