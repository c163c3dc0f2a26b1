"""The order jobs run in — priority (higher first), then position, then id — and moving a job
within it. Positions are floats, so a job moved up or down is slotted between two others
without renumbering the queue."""
from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from studio.jobs.models import PAUSED, PENDING, Job

RUN_ORDER = (Job.priority.desc(), Job.position, Job.id)
_REVERSE = (Job.priority.asc(), Job.position.desc(), Job.id.desc())


def runs_before(priority: int, position: float, job_id: int):
    """SQL condition: the job runs before the one with this priority, position and id."""
    return (Job.priority > priority) | ((Job.priority == priority) & (
        (Job.position < position) | ((Job.position == position) & (Job.id < job_id))))


def runs_after(priority: int, position: float, job_id: int):
    return (Job.priority < priority) | ((Job.priority == priority) & (
        (Job.position > position) | ((Job.position == position) & (Job.id > job_id))))


def new_place(session: Session, row: Job, where: str) -> tuple[int, float]:
    """(priority, position) of a waiting job moved `up`/`down` past its neighbour or to the
    `top`/`bottom`; a job moved past one of another priority takes that priority."""
    waiting = select(Job).where(Job.status.in_((PENDING, PAUSED)), Job.id != row.id)
    key = (row.priority, row.position, row.id)
    if where == "top":
        first = session.scalars(waiting.order_by(*RUN_ORDER).limit(1)).first()
        return (row.priority, row.position) if first is None else (
            max(first.priority, row.priority), first.position - 1)
    if where == "bottom":
        last = session.scalars(waiting.order_by(*_REVERSE).limit(1)).first()
        return (row.priority, row.position) if last is None else (
            min(last.priority, row.priority), last.position + 1)
    if where == "up":  # slot between the one ahead and the one before that
        two = session.scalars(waiting.where(runs_before(*key)).order_by(*_REVERSE).limit(2)).all()
        step = -2
    else:
        two = session.scalars(waiting.where(runs_after(*key)).order_by(*RUN_ORDER).limit(2)).all()
        step = 2
    if not two:
        return row.priority, row.position
    neighbour = two[0]
    beyond = (two[1].position if len(two) > 1 and two[1].priority == neighbour.priority
              else neighbour.position + step)
    return neighbour.priority, (beyond + neighbour.position) / 2
