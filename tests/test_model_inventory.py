"""The models inventory (studio/model_inventory.py, the Models tab's data): every kind listed
with family, size and hashes; import by path or by URL (resumable) as a job, into the A1111
folder of its kind; delete; refusals by field."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from engines.base import ParamError
from studio.tasks import run_task, validate_task


@pytest.fixture(scope="module")
def pixart(tmp_path_factory) -> Path:
    from family_pipelines import build_pixart

    return build_pixart(tmp_path_factory.mktemp("inventory") / "tiny-pixart-alpha")


def test_import_list_hash_use_and_delete_a_folder(ctx, pixart):
    from studio.model_inventory import delete_model
    from studio.models import list_offered

    source = pixart
    validate_task(ctx, "import_model", {"path": str(source)})
    result = run_task(ctx, "import_model", {"path": str(source)})
    assert result.info["kind"] == "checkpoint" and result.info["family"] == "PixArt-α"
    target = Path(ctx.config.models_dir) / "Stable-diffusion" / source.name
    entry = next(e for e in list_offered(ctx, "checkpoint") if e.path == str(target))
    weights = sorted((target / "transformer").glob("*.safetensors"))[0]
    assert entry.sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert entry.short_hash == entry.sha256[:10] and entry.deletable and entry.size_bytes > 0
    assert any(e.kind == "checkpoint" and e.name == "genstudio-tiny-sd" and not e.deletable
               for e in list_offered(ctx))
    # The imported model is offered to txt2img, and its hash is the infotext's Model hash.
    made = run_task(ctx, "txt2img", {"prompt": "x", "steps": 2, "seed": 1, "width": 64,
                                     "height": 64, "model": str(target)})
    assert ctx.gallery.get(made.item_ids[0]).params["model_hash"] == entry.short_hash
    with pytest.raises(ParamError, match="already in the models folder"):
        validate_task(ctx, "import_model", {"path": str(source)})
    delete_model(ctx, str(target))
    assert not target.exists()
    with pytest.raises(ParamError):
        validate_task(ctx, "txt2img", {"prompt": "x", "model": str(target)})
    with pytest.raises(ParamError, match="offline"):
        validate_task(ctx, "import_model", {"source": "kandinsky-community/kandinsky-2-2-decoder"})
    with pytest.raises(ParamError) as error:
        delete_model(ctx, "/etc/hostname")
    assert error.value.field == "path"


def test_every_kind_is_listed_and_a_controlnet_folder_imports(ctx, tmp_path):
    import torch
    from diffusers import ControlNetModel

    from studio.models import list_offered

    torch.manual_seed(0)
    folder = tmp_path / "tiny-controlnet"
    ControlNetModel(block_out_channels=(32, 64), layers_per_block=1, in_channels=4,
                    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                    cross_attention_dim=768, conditioning_embedding_out_channels=(16, 32),
                    norm_num_groups=8, attention_head_dim=4).save_pretrained(folder)
    result = run_task(ctx, "import_model", {"path": str(folder)})
    assert result.info["kind"] == "controlnet" and result.info["family"] == "SD 1.x"
    assert (Path(ctx.config.models_dir) / "ControlNet" / "tiny-controlnet").is_dir()
    kinds = {e.kind for e in list_offered(ctx)}
    assert {"checkpoint", "controlnet", "upscaler", "llm", "style"} <= kinds
    with pytest.raises(ParamError) as error:
        list_offered(ctx, "hypernetwork")
    assert error.value.field == "kind"
    pickled = tmp_path / "old.ckpt"
    pickled.write_bytes(b"not really")
    with pytest.raises(ParamError, match="pickled") as error:
        validate_task(ctx, "import_model", {"path": str(pickled)})


# ------------------------------------------------------------------ import by URL (resumable)
@pytest.fixture
def file_server(tmp_path):
    """A local HTTP server for tmp_path/served that honours Range (as model hosts do)."""
    import http.server
    import threading

    served, ranges = tmp_path / "served", []
    served.mkdir()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            data = (served / self.path.lstrip("/")).read_bytes()
            start = 0
            if self.headers.get("Range"):
                ranges.append(self.headers["Range"])
                start = int(self.headers["Range"].split("=")[1].split("-")[0])
            self.send_response(206 if start else 200)
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            self.wfile.write(data[start:])

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield served, f"http://127.0.0.1:{server.server_port}", ranges
    server.shutdown()


def test_import_by_url_resumes_and_needs_downloads_allowed(ctx, file_server, monkeypatch):
    import dataclasses

    import torch
    from safetensors.torch import save_file

    served, base, ranges = file_server
    save_file({f"lora_unet_block_{i}.lora_down.weight": torch.randn(4, 64) for i in range(8)},
              str(served / "my-lora.safetensors"))
    url = f"{base}/my-lora.safetensors"
    with pytest.raises(ParamError, match="offline"):  # the test studio is offline
        validate_task(ctx, "import_model", {"source": url})
    ctx.config = dataclasses.replace(ctx.config, offline=False)
    with pytest.raises(ParamError, match="--allow-downloads"):
        validate_task(ctx, "import_model", {"source": url})
    monkeypatch.setenv("GENSTUDIO_ALLOW_DOWNLOADS", "1")  # the environment allows it too
    with pytest.raises(ParamError, match="pickled"):  # past the allowance: the next check
        validate_task(ctx, "import_model", {"source": f"{base}/model.ckpt"})
    monkeypatch.delenv("GENSTUDIO_ALLOW_DOWNLOADS")
    ctx.config = dataclasses.replace(ctx.config, allow_downloads=True)  # --allow-downloads
    with pytest.raises(ParamError, match="pickled"):
        validate_task(ctx, "import_model", {"source": f"{base}/model.ckpt"})
    # A download that broke off halfway: its partial is resumed with a Range request.
    whole = (served / "my-lora.safetensors").read_bytes()
    staging = Path(ctx.config.models_dir) / ".downloads"
    staging.mkdir(parents=True)
    (staging / ".my-lora.safetensors.partial").write_bytes(whole[:1000])
    progress = []
    result = run_task(ctx, "import_model", {"source": url}, on_progress=progress.append)
    assert ranges == ["bytes=1000-"]
    target = Path(ctx.config.models_dir) / "Lora" / "my-lora.safetensors"
    assert target.read_bytes() == whole and result.info["kind"] == "lora"
    assert any("downloading my-lora.safetensors" in (p.message or "") for p in progress)
    assert progress[0].total == len(whole)


def test_the_models_tab_tells_paths_from_downloads(tmp_path):
    from studio.ui.models import import_params

    assert import_params(str(tmp_path), "auto") == {"path": str(tmp_path)}
    assert import_params("https://example.org/a.safetensors", "lora") == {
        "source": "https://example.org/a.safetensors", "kind": "lora"}
    assert import_params("kandinsky-community/kandinsky-2-2-decoder", None) == {
        "source": "kandinsky-community/kandinsky-2-2-decoder"}
