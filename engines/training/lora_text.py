"""What a LoRA trainer needs to know about a model family: how a caption becomes the UNet's
conditioning, which text-encoder layers get LoRA, and the kohya/A1111 names the result is saved
under.

- SD 1.x / 2.x: one text encoder; the UNet reads its hidden states.
- SDXL: two text encoders; the UNet reads both hidden states side by side, the second one's
  pooled output ("text_embeds") and six size numbers ("time_ids": original size, crop corner,
  target size), as diffusers' `train_text_to_image_lora_sdxl.py` passes them.
Anything else (a refiner, PixArt, SD3, Flux, Kandinsky...) is refused in one sentence.
"""
from __future__ import annotations

from engines.base import ParamError

# the text encoders' attention projections (what kohya and diffusers' scripts train)
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


def family(pipe) -> str:
    """"sd" or "sdxl"; ParamError for a model family this trainer does not handle."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    if isinstance(pipe, StableDiffusionXLPipeline) and pipe.text_encoder is not None:
        return "sdxl"
    if isinstance(pipe, StableDiffusionPipeline):
        return "sd"
    name = type(pipe).__name__
    what = ("an SDXL refiner" if name.startswith("StableDiffusionXL") and pipe.text_encoder is None
            else f"a {name} model")
    raise ParamError("model", f"LoRA training supports SD 1.x/2.x and SDXL base models; this is "
                     f"{what}")


def text_encoders(pipe) -> dict:
    """{"text_encoder": module, ["text_encoder_2": module]}: the prefixes of diffusers' layout."""
    out = {"text_encoder": pipe.text_encoder}
    if getattr(pipe, "text_encoder_2", None) is not None:
        out["text_encoder_2"] = pipe.text_encoder_2
    return out


def encode(pipe, caption: str, table: dict | None = None):
    """(hidden states 1 x T x D, pooled 1 x P or None) of one caption; gradients flow, so text
    LoRA and trigger vectors train through it. `table` puts trigger vectors in (SD only)."""
    if getattr(pipe, "text_encoder_2", None) is not None:
        states, _, pooled, _ = pipe.encode_prompt(caption, device=pipe.unet.device,
                                                  num_images_per_prompt=1,
                                                  do_classifier_free_guidance=False)
        return states, pooled
    from engines.diffusion.prompt_weights import encode_chunks, tokenize_prompt

    # the first chunk only: the model's own window, as the pipeline reads a short caption
    chunks, _ = tokenize_prompt(caption, pipe.tokenizer, table or {})
    states, _ = encode_chunks(chunks[:1], pipe.tokenizer, pipe.text_encoder)
    return states, None


def trigger_table(pipe, trigger: str, count: int, init: str = "", seed: int = 0):
    """Trainable vectors for the trigger word and the lookup table tokenize_prompt reads them
    from. They start from the mean embedding of `init` (A1111's "initialization text", e.g. the
    nearest known word) or, without it, of the trigger's own tokens, plus a little noise drawn
    from `seed` (so one seed gives one run: from the global random state, two runs differed)."""
    import torch

    ids = pipe.tokenizer(trigger, add_special_tokens=False)["input_ids"]
    start_ids = pipe.tokenizer(init, add_special_tokens=False)["input_ids"] if init else ids
    weight = pipe.text_encoder.get_input_embeddings().weight
    start = weight[start_ids].mean(0, keepdim=True).detach().float().repeat(count, 1)
    noise = torch.randn(start.shape, generator=torch.Generator("cpu").manual_seed(seed))
    vectors = torch.nn.Parameter(start + 0.01 * noise.to(start.device))
    return vectors, vector_table(pipe, trigger, vectors)


def vector_table(pipe, trigger: str, vectors) -> dict:
    """The lookup table `encode` puts trigger vectors in from: the trigger's first token ->
    [(all its tokens, the vectors that replace them)]."""
    ids = pipe.tokenizer(trigger, add_special_tokens=False)["input_ids"]
    return {ids[0]: [(tuple(ids), vectors)]}


def unet_kwargs(pipe, states, pooled, side: int) -> dict:
    """The UNet's conditioning arguments for a batch of encoded captions."""
    kwargs = {"encoder_hidden_states": states.to(pipe.unet.dtype)}
    if pooled is not None:  # SDXL: pooled text and (original size, crop corner, target size)
        import torch

        ids = torch.tensor([[side, side, 0, 0, side, side]], dtype=pooled.dtype)
        kwargs["added_cond_kwargs"] = {
            "text_embeds": pooled.to(pipe.unet.dtype),
            "time_ids": ids.repeat(len(pooled), 1).to(pipe.unet.device, pipe.unet.dtype)}
    return kwargs


def add_lora(module, rank: int, targets, ranks: dict[str, int] | None = None,
             dropout: float = 0.0) -> None:
    """A peft LoRA adapter ("default") on `module`'s `targets`, alpha = rank; peft's own
    injection, so it works on diffusers and transformers modules alike. `ranks` gives some
    modules (by name) a rank of their own (peft's rank_pattern), alpha again equal to it;
    `dropout` is peft's lora_dropout (active in train mode only)."""
    from peft import LoraConfig, inject_adapter_in_model

    ranks = dict(ranks or {})
    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                       target_modules=targets, rank_pattern=ranks,
                                       alpha_pattern=ranks, lora_dropout=dropout), module)


def conv_ranks(unet, target, conv_rank: int) -> dict[str, int]:
    """peft's rank_pattern giving the convolutions that `target` (a regex) matches `conv_rank`
    (empty when 0 or when `target` is a list of names)."""
    import re

    import torch

    if not conv_rank or not isinstance(target, str):
        return {}
    return {name: conv_rank for name, module in unet.named_modules()
            if isinstance(module, torch.nn.Conv2d) and re.fullmatch(target, name)}


def lora_state(module) -> dict:
    """A module's LoRA weights under peft's saved names (`...q_proj.lora_A.weight`)."""
    return {k.replace(".default.", "."): v for k, v in module.state_dict().items() if ".lora_" in k}


def load_lora_state(module, state: dict) -> None:
    own = {k.replace(".default.", "."): k for k in module.state_dict() if ".lora_" in k}
    module.load_state_dict({own[k]: v for k, v in state.items()}, strict=False)


def to_kohya(parts: dict[str, dict], rank: int, sdxl: bool) -> dict:
    """peft LoRA weights by part ({"unet": ..., "text_encoder": ..., "text_encoder_2": ...}) ->
    kohya/A1111 keys with diffusers' `convert_state_dict_to_kohya`: `lora_unet_<module>`,
    `lora_te_` (SD 1.x/2.x) or `lora_te1_` / `lora_te2_` (SDXL), `.lora_down` / `.lora_up`,
    `.alpha` = each module's rank (scale 1, as trained). The UNet keeps diffusers' module
    names, as diffusers' own SDXL script writes them; A1111, ComfyUI and diffusers map those
    names."""
    from diffusers.utils import convert_state_dict_to_kohya

    merged = {}
    for part, state in parts.items():
        for key, value in state.items():
            if part != "unet" and not key.startswith("text_model."):
                key = f"text_model.{key}"  # transformers 5's CLIPTextModel lost the prefix
            merged[f"{part}.{key}"] = value
    out = {}
    for key, value in convert_state_dict_to_kohya(merged).items():
        if not sdxl and key.startswith("lora_te1_"):
            key = "lora_te_" + key[len("lora_te1_"):]  # kohya's SD 1.x/2.x prefix
        # alpha: the module's own rank (diffusers counts lora_down's rows), which is `rank`
        # unless some modules had a rank of their own
        out[key] = value.detach().float().cpu().contiguous()
    return out
