"""EngineManager: lazy load on first use, LRU unload under the memory budget, one device lock."""
from __future__ import annotations

import sys
import threading
import time
import types
from dataclasses import dataclass

import pytest

from engines.base import (CancelToken, Cancelled, EngineManager, EngineSpec, Progress,
                          check_int, check_range, choose_device, choose_dtype)


class FakeEngine:
    """A real object following the protocol; it 'holds' `size` bytes once loaded."""
    kind = "fake"
    loads: list[str] = []

    def __init__(self, model_id: str, device: str) -> None:
        self.model_id, self.device, self._loaded = model_id, device, False
        self.size = int(model_id.split("-")[-1])

    @property
    def loaded(self) -> bool:
        return self._loaded

    def load(self) -> None:
        FakeEngine.loads.append(self.model_id)
        self._loaded = True

    def unload(self) -> None:
        self._loaded = False

    def memory_bytes(self) -> int:
        return self.size if self._loaded else 0

    def generate(self, params, on_progress=None, cancel=None):
        for step in range(3):
            if cancel:
                cancel.raise_if_cancelled()
            if on_progress:
                on_progress(Progress(step + 1, 3))
        return params


@pytest.fixture
def manager(monkeypatch):
    module = types.ModuleType("fake_engines")
    module.FakeEngine = FakeEngine
    monkeypatch.setitem(sys.modules, "fake_engines", module)
    FakeEngine.loads = []
    m = EngineManager("cpu", memory_budget_bytes=100)
    m.register(EngineSpec("fake", "fake_engines:FakeEngine", "model-40"))
    return m


def test_loads_lazily_once(manager):
    assert FakeEngine.loads == []
    engine = manager.get("fake")
    assert engine.loaded and engine.device == "cpu" and manager.get("fake") is engine
    assert FakeEngine.loads == ["model-40"]


def test_least_recently_used_is_unloaded_over_budget(manager):
    a = manager.get("fake", "a-40")
    b = manager.get("fake", "b-40")
    manager.get("fake", "a-40")  # a is now the most recent
    c = manager.get("fake", "c-40")  # 120 > 100: b goes
    assert a.loaded and c.loaded and not b.loaded
    assert sorted(m for _, m, _ in manager.loaded()) == ["a-40", "c-40"]
    huge = manager.get("fake", "huge-500")  # alone over budget: kept, the others unloaded
    assert huge.loaded and not a.loaded and not c.loaded


def test_device_lock_serialises_use(manager):
    order = []

    def worker(name):
        with manager.use("fake") as engine:
            order.append(f"{name}-start")
            time.sleep(0.05)
            order.append(f"{name}-end")

    threads = [threading.Thread(target=worker, args=(n,)) for n in "xy"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert order[0][1:] == "-start" and order[1] == order[0][0] + "-end"


def test_cancel_and_progress(manager):
    seen = []
    token = CancelToken()
    engine = manager.get("fake")
    assert engine.generate("p", seen.append, token) == "p" and [p.step for p in seen] == [1, 2, 3]
    assert seen[-1].fraction == 1.0
    token.cancel()
    with pytest.raises(Cancelled):
        engine.generate("p", None, token)


def test_unknown_engine_and_validation_messages(manager):
    with pytest.raises(ValueError, match="unknown engine 'nope'"):
        manager.get("nope")
    with pytest.raises(ValueError, match=r"`steps` must be between 1 and 150, got 0"):
        check_int("steps", 0, 1, 150)
    with pytest.raises(ValueError, match=r"`guidance` must be a number, got 'x'"):
        check_range("guidance", "x", 0, 30)
    with pytest.raises(ValueError, match="whole number"):
        check_int("steps", 2.5, 1, 150)


def test_device_and_dtype_choice():
    import torch

    assert choose_device("cpu") == "cpu"
    assert choose_device("auto") in ("cpu", "cuda", "mps")
    assert choose_dtype("cpu", half_precision=True) == torch.float32  # half is slower on CPU
    with pytest.raises(ValueError, match="device"):
        choose_device("tpu")
    if not torch.cuda.is_available():
        from engines.base import EngineError
        with pytest.raises(EngineError, match="CUDA"):
            choose_device("cuda")
