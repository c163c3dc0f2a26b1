"""Build assets/sd-configs: the diffusers configs and CLIP tokenizer that single-file checkpoints
need, from public sources on the package registry, so `.safetensors` files load with no hub.

A single `.safetensors` Stable Diffusion checkpoint holds weights only. diffusers'
`from_single_file` takes the rest (the UNet/VAE/text-encoder configs, the scheduler, the
tokenizer) from the family's hub repository, which is unreachable here. This recipe derives them
from sources that ship in pip packages:

  - the original LDM/SGM inference yaml files (v1-inference.yaml, v2-inference-v.yaml,
    sd_xl_base.yaml), shipped inside the `invokeai` wheel, turned into diffusers configs by
    diffusers' own `create_unet_diffusers_config_from_ldm` / `create_vae_diffusers_config_from_ldm`;
  - OpenCLIP's text tower sizes (ViT-L-14, ViT-H-14, ViT-bigG-14 model configs) and its copy of
    CLIP's BPE merges (bpe_simple_vocab_16e6.txt.gz), shipped inside the `open_clip_torch` wheel.

Run:  python scripts/make_sd_configs.py            (downloads the two wheels with pip, no deps)
      python scripts/make_sd_configs.py --wheels DIR   (wheels already downloaded to DIR)
"""
from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
OUT = REPO_ROOT / "assets" / "sd-configs"

# family -> (LDM yaml, image size, pipeline class, text towers: (component, open_clip arch, kind))
FAMILIES = {
    "v1": ("v1-inference.yaml", 512, "StableDiffusionPipeline",
           [("text_encoder", "ViT-L-14", "openai")]),
    "v2": ("v2-inference-v.yaml", 768, "StableDiffusionPipeline",
           [("text_encoder", "ViT-H-14", "openclip-penultimate")]),
    "xl_base": ("sd_xl_base.yaml", 1024, "StableDiffusionXLPipeline",
                [("text_encoder", "ViT-L-14", "openai"),
                 ("text_encoder_2", "ViT-bigG-14", "openclip-projection")]),
}


def fetch_wheels(folder: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(folder),
                    "invokeai", "open_clip_torch"], check=True)


def read_from_wheel(folder: Path, package: str, member: str) -> bytes:
    wheels = sorted(folder.glob(f"{package}-*.whl"))
    if not wheels:
        raise SystemExit(f"no {package} wheel in {folder}")
    with zipfile.ZipFile(wheels[-1]) as wheel:
        return wheel.read(member)


def clip_vocab_and_merges(bpe_gz: bytes) -> tuple[dict[str, int], list[str]]:
    """CLIP's vocabulary as OpenAI's tokenizer builds it: 256 byte characters, the same with
    `</w>`, one entry per merge, then the two special tokens (49,408 in all)."""
    lines = gzip.decompress(bpe_gz).decode("utf-8").split("\n")
    merges = lines[1:49152 - 256 - 2 + 1]  # line 0 is a version header
    from engines.diffusion.random_weights import _byte_chars

    # GPT-2's byte stand-ins in its order: printable bytes as themselves, then the others as
    # chr(256 + n), i.e. by code point. The order fixes the ids ("!" is 0, "a</w>" is 320).
    byte_chars = sorted(_byte_chars())
    pieces = byte_chars + [c + "</w>" for c in byte_chars]
    pieces += ["".join(m.split()) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    return {piece: index for index, piece in enumerate(pieces)}, merges


def text_config(arch: dict, kind: str) -> dict:
    text = arch["text_cfg"]
    layers = text["layers"]
    if kind == "openclip-penultimate":
        # SD 2 reads the penultimate layer; diffusers' converter drops the last one
        layers -= 1
    return {
        "architectures": ["CLIPTextModelWithProjection" if kind == "openclip-projection"
                          else "CLIPTextModel"],
        "hidden_size": text["width"], "intermediate_size": 4 * text["width"],
        "num_attention_heads": text["heads"], "num_hidden_layers": layers,
        "max_position_embeddings": text["context_length"], "vocab_size": text["vocab_size"],
        "projection_dim": arch["embed_dim"],
        # OpenAI's CLIP was trained with QuickGELU, OpenCLIP's towers with exact GELU
        "hidden_act": "quick_gelu" if kind == "openai" else "gelu",
        "layer_norm_eps": 1e-5,
        # eos 2 keeps transformers' legacy pooling (argmax id = <|endoftext|>), as hub configs do
        "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1,
    }


def scheduler_config(params: dict, family: str) -> dict:
    prediction = "v_prediction" if params.get("parameterization") == "v" else "epsilon"
    config = {
        "_class_name": "EulerDiscreteScheduler" if family == "xl_base" else "PNDMScheduler",
        "beta_start": params.get("linear_start", 0.00085),
        "beta_end": params.get("linear_end", 0.012),
        "beta_schedule": "scaled_linear",
        "num_train_timesteps": params.get("timesteps", 1000),
        "prediction_type": prediction, "steps_offset": 1, "clip_sample": False,
        "set_alpha_to_one": False, "skip_prk_steps": True, "timestep_spacing": "leading",
    }
    return config


def family_config(family: str, wheels: Path) -> dict:
    from diffusers.loaders.single_file_utils import (create_unet_diffusers_config_from_ldm,
                                                     create_vae_diffusers_config_from_ldm)

    yaml_name, image_size, pipeline, towers = FAMILIES[family]
    original = yaml.safe_load(read_from_wheel(
        wheels, "invokeai", f"invokeai/configs/stable-diffusion/{yaml_name}"))
    params = original["model"]["params"]
    unet = create_unet_diffusers_config_from_ldm(original, {}, image_size=image_size)
    if family == "v2":
        unet["upcast_attention"] = True  # SD 2.x 768-v overflows fp16 attention otherwise
    vae = create_vae_diffusers_config_from_ldm(original, {}, image_size=image_size)
    if family == "xl_base":
        vae["force_upcast"] = True  # the SDXL VAE overflows in fp16 (diffusers upcasts it)
    config = {"pipeline": pipeline, "unet": unet, "vae": vae,
              "scheduler": scheduler_config(params, family)}
    for component, arch_name, kind in towers:
        arch = json.loads(read_from_wheel(wheels, "open_clip_torch",
                                          f"open_clip/model_configs/{arch_name}.json"))
        config[component] = text_config(arch, kind)
        # SD 2's and SDXL's second tokenizer pad with "!" (OpenCLIP pads with id 0)
        config[component.replace("text_encoder", "tokenizer")] = {
            "pad_token": "<|endoftext|>" if kind == "openai" else "!"}
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--wheels", type=Path, help="folder holding the invokeai and "
                        "open_clip_torch wheels (default: download them with pip)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        wheels = args.wheels or Path(scratch)
        if args.wheels is None:
            fetch_wheels(wheels)
        OUT.mkdir(parents=True, exist_ok=True)
        for family in FAMILIES:
            config = family_config(family, wheels)
            (OUT / f"{family}.json").write_text(json.dumps(config, indent=1, sort_keys=True) + "\n")
            print(f"wrote {OUT / family}.json")
        vocab, merges = clip_vocab_and_merges(
            read_from_wheel(wheels, "open_clip_torch", "open_clip/bpe_simple_vocab_16e6.txt.gz"))
        tokenizer = OUT / "clip-tokenizer"
        tokenizer.mkdir(exist_ok=True)
        (tokenizer / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False) + "\n")
        (tokenizer / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
        print(f"wrote {tokenizer} ({len(vocab)} tokens, {len(merges)} merges)")


if __name__ == "__main__":
    sys.path.insert(0, str(REPO_ROOT))
    main()
