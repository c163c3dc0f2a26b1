"""The Style transfer tab's "Train a new style": uploads enter the gallery, the training is a
`train_style` job (listed in the queue), the handler streams its progress and loss curve, and
the finished style is listed by the tab. Two iterations at 32 px: seconds on a CPU."""
from __future__ import annotations

import pytest
from PIL import Image

pytestmark = pytest.mark.slow


def test_training_is_a_job_and_its_style_is_listed(studio, tmp_path):
    from studio.ui import style_train
    from studio.ui.style import refresh_styles

    ctx = studio
    style_file, photo = tmp_path / "style.png", tmp_path / "photo.png"
    Image.new("RGB", (48, 48), (200, 30, 30)).save(style_file)
    Image.new("RGB", (48, 48), (30, 30, 200)).save(photo)
    updates = list(style_train.start_training(ctx, "Tiny test", [str(style_file)], [str(photo)],
                                              [], 32, 2))
    job_id = updates[0][0]
    assert any("iteration 2/2" in u[1] for u in updates)
    assert "Saved as style **user:tiny-test**" in updates[-1][1]
    job = ctx.queue.get(job_id)
    assert job.task == "train_style" and job.status == "completed"
    assert job.params["style_image_ids"] and job.params["content_image_ids"]  # uploads by id
    assert ctx.gallery.get(job.params["style_image_ids"][0]).task == "upload"
    choices = refresh_styles(ctx, None)[0]["choices"]
    assert ("Tiny test [user]", "user:tiny-test") in choices


def test_a_nameless_training_is_refused_and_saves_nothing(studio, tmp_path):
    import gradio as gr

    from studio.ui import style_train

    with pytest.raises(gr.Error, match="name"):
        next(style_train.start_training(studio, "  ", [], [], [], 32, 2))
    with pytest.raises(gr.Error, match="style_image_ids"):
        next(style_train.start_training(studio, "x", [], [], [], 32, 2))
    assert studio.gallery.query().total == 0 and studio.queue.list() == []
