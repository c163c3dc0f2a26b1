"""The "style" task end to end on a tiny user style: validation, gallery lineage, all-or-nothing
saving; and CycleGAN training: losses fall, checkpoints load and resume, cancel keeps a checkpoint,
a finished run appears in the style list."""
from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engines.base import Cancelled, CancelToken
from studio.tasks import run_task, validate_task


def _photo(seed: int = 0, size=(48, 40)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), np.uint8))


def _b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture
def user_style(ctx) -> str:
    from safetensors.torch import save_file

    from engines.style.net import GeneratorConfig, ResnetGenerator

    folder = Path(ctx.config.styles_dir) / "tiny"
    folder.mkdir(parents=True)
    torch.manual_seed(0)
    save_file(ResnetGenerator(GeneratorConfig(ngf=8, n_blocks=1)).state_dict(),
              str(folder / "generator.safetensors"))
    (folder / "style.json").write_text(json.dumps({"name": "Tiny", "description": "test"}))
    return "user:tiny"


def test_upload_is_saved_as_parent_of_the_result(ctx, user_style):
    result = run_task(ctx, "style", {"style": user_style, "image": _b64(_photo()), "strength": 0.8})
    item = ctx.gallery.get(result.item_ids[0])
    assert item.task == "style" and item.model == user_style and (item.width, item.height) == (48, 40)
    parent = ctx.gallery.get(item.parent_id)
    assert parent.task == "upload"
    assert [a.id for a in ctx.gallery.lineage(item.id)] == [parent.id, item.id]
    assert item.params["strength"] == 0.8 and item.params["style"] == user_style


def test_gallery_image_is_the_parent_without_a_copy(ctx, user_style):
    source = ctx.gallery.add_image(_photo(1), task="txt2img", engine="diffusion", prompt="a cat")
    result = run_task(ctx, "style", {"style": user_style, "image_id": source.id, "output_side": 32})
    item = ctx.gallery.get(result.item_ids[0])
    assert item.parent_id == source.id and max(item.width, item.height) == 32
    assert ctx.gallery.query().total == 2


@pytest.mark.parametrize("params,message", [
    ({"style": "nope", "image": "x"}, "unknown style 'nope'"),
    ({"style": "user:tiny"}, "needs `image_id` or `image`"),
    ({"style": "user:tiny", "image": "not base64!"}, "`image` is not valid base64"),
    ({"style": "user:tiny", "image_id": 999}, "no gallery item with id 999"),
    ({"style": "user:tiny", "image": "IMAGE", "strength": 2}, "`strength` must be between 0"),
    ({"style": "user:tiny", "image": "IMAGE", "colour": 1}, "unknown parameter"),
])
def test_validation_names_the_field(ctx, user_style, params, message):
    params = {k: (_b64(_photo()) if v == "IMAGE" else v) for k, v in params.items()}
    with pytest.raises(ValueError, match=message):
        validate_task(ctx, "style", params)


def test_tiny_upload_is_refused_before_any_work(ctx, user_style):
    with pytest.raises(ValueError, match="too small: 1x1"):
        run_task(ctx, "style", {"style": user_style, "image": _b64(Image.new("RGB", (1, 1)))})
    assert ctx.gallery.query().total == 0


def test_cancel_writes_nothing(ctx, user_style):
    cancel = CancelToken()
    cancel.cancel()
    with pytest.raises(Cancelled):
        run_task(ctx, "style", {"style": user_style, "image": _b64(_photo())}, cancel=cancel)
    assert ctx.gallery.query().total == 0


# ---------------------------------------------------------------- training
def _domains():
    """Content: smooth colour fields. Style: the same kind of picture in dark stripes, which a
    tiny CycleGAN starts to learn in a few dozen iterations."""
    rng = np.random.default_rng(0)
    content, style = [], []
    for _ in range(6):
        base = rng.integers(40, 220, 3)
        content.append(Image.fromarray(np.broadcast_to(base, (48, 48, 3)).astype(np.uint8)))
        stripes = np.zeros((48, 48, 3), np.uint8)
        stripes[::4] = rng.integers(0, 255, 3)
        style.append(Image.fromarray(stripes))
    return style, content


def test_training_lowers_losses_checkpoints_and_resumes(tmp_path):
    from engines.training.cyclegan import TrainConfig, load_checkpoint, train

    style, content = _domains()
    config = TrainConfig(size=32, iterations=40, ngf=8, n_blocks=1, ndf=8, d_layers=2,
                         lr=1e-3, sample_every=10, checkpoint_every=20, pool_size=4)
    rows = []
    model, state = train(config, style, content, tmp_path / "run",
                         on_losses=lambda it, losses: rows.append(losses))
    assert state.iteration == 40 and len(rows) == 40
    first = np.mean([r["G_cycle"] + r["G_identity"] for r in rows[:5]])
    last = np.mean([r["G_cycle"] + r["G_identity"] for r in rows[-5:]])
    assert last < 0.8 * first, (first, last)  # seeded, so the same every run
    assert len(list((tmp_path / "run" / "samples").glob("*.png"))) == 4

    # the checkpoint is tensors and numbers only: weights_only=True reads it
    checkpoint = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert checkpoint["iteration"] == 40
    torch.testing.assert_close(checkpoint["G_AB"]["model.1.weight"],
                               model.G_AB.state_dict()["model.1.weight"])

    # resume: a longer run picks up at 40 with the saved weights and optimiser state
    config.iterations = 50
    log = []
    _, state = train(config, style, content, tmp_path / "run", log=log.append)
    assert log[0] == "resumed at iteration 40" and state.iteration == 50


def test_cancel_keeps_a_resumable_checkpoint(tmp_path):
    from engines.training.cyclegan import TrainConfig, load_checkpoint, train

    style, content = _domains()
    config = TrainConfig(size=32, iterations=100, ngf=8, n_blocks=1, ndf=8, d_layers=2)
    cancel = CancelToken()

    def stop_at_5(iteration, _losses):
        if iteration == 5:
            cancel.cancel()

    with pytest.raises(Cancelled):
        train(config, style, content, tmp_path / "run", cancel=cancel, on_losses=stop_at_5)
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["iteration"] == 5
