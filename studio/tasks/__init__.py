"""Tasks: the one place where a request (from a tab, the queue or an HTTP API) becomes engine
work plus gallery items. Every caller goes through `run_task`, so a generation made in the UI, by
the queue or through an API is validated, run and saved the same way.

A task module registers a TaskSpec: `validate(params)` is cheap and raises ValueError naming the
bad field (used at enqueue time, before any weights load); `run(...)` does the work on the
engine manager's device lock and writes results to the gallery only once all of them exist, so a
failed or cancelled generation leaves nothing half-written.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from engines.base import CancelToken, ParamError, ProgressCallback, no_progress

if TYPE_CHECKING:
    from studio.context import StudioContext


@dataclass
class TaskResult:
    item_ids: list[int] = field(default_factory=list)  # gallery items written, in order
    images: list[Any] = field(default_factory=list)  # PIL images, for callers that show them
    text: str | None = None
    info: dict[str, Any] = field(default_factory=dict)  # seeds, infotexts, tokens/s...


@dataclass(frozen=True)
class TaskSpec:
    name: str  # "txt2img", "img2img", "inpaint", "outpaint", "style", "chat", "code"...
    engine: str  # engine kind in the EngineManager
    validate: Callable[["StudioContext", dict], None]
    run: Callable[["StudioContext", dict, ProgressCallback, CancelToken], TaskResult]
    description: str = ""
    lane: str = "generate"  # "training": long jobs run by a worker of their own (studio/jobs)


# Modules that define tasks; each calls register() at import. Imported lazily on first use so the
# studio starts without importing any of them.
TASK_MODULES = (
    "studio.tasks.text",
    "studio.tasks.image",
    "studio.tasks.style",
    "studio.tasks.style_training",
    "studio.tasks.upscale",
    "studio.tasks.hires",
    "studio.tasks.lora_training",
    "studio.tasks.variations",
    "studio.tasks.models",
    "studio.tasks.refiner",
    "studio.tasks.documents",
    "studio.tasks.gallery_index",
)

_registry: dict[str, TaskSpec] = {}
_imported = False


def register(spec: TaskSpec) -> TaskSpec:
    _registry[spec.name] = spec
    return spec


def _import_task_modules() -> None:
    global _imported
    if _imported:
        return
    for module in TASK_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as error:
            if error.name != module:  # a missing dependency inside the module is a real bug
                raise
    _imported = True


def task_names() -> list[str]:
    _import_task_modules()
    return sorted(_registry)


def get_task(name: str) -> TaskSpec:
    _import_task_modules()
    if name not in _registry:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(sorted(_registry)) or 'none'}")
    return _registry[name]


def check_fields(task: str, params: Any, fields) -> None:
    """ParamError unless `params` is an object whose keys are all among `fields`: a misspelt
    parameter is refused, not ignored."""
    if not isinstance(params, dict):
        raise ParamError(None, f"parameters must be an object, got {type(params).__name__}")
    unknown = sorted(set(params) - set(fields))
    if unknown:
        raise ParamError(unknown[0], f"unknown parameter(s) for {task}: {', '.join(unknown)}")


def lane_tasks(lane: str) -> tuple[str, ...]:
    """Names of the tasks that run on `lane`."""
    _import_task_modules()
    return tuple(sorted(name for name, spec in _registry.items() if spec.lane == lane))


def validate_task(ctx: "StudioContext", name: str, params: dict) -> None:
    if not isinstance(params, dict):
        raise ValueError(f"parameters for {name!r} must be an object, got {type(params).__name__}")
    get_task(name).validate(ctx, params)


def run_task(ctx: "StudioContext", name: str, params: dict,
             on_progress: ProgressCallback | None = None,
             cancel: CancelToken | None = None) -> TaskResult:
    """Run a task on params the queue has validated (JobQueue.check at enqueue); every caller
    goes through the queue (studio/jobs/runner.py), so nothing is validated twice."""
    spec = get_task(name)
    return spec.run(ctx, params, on_progress or no_progress, cancel or CancelToken())
