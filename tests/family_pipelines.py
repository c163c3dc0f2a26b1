"""Small random-weight pipelines of every family the studio drives, saved with save_pretrained,
for tests that run the real loading and generation code on CPU in seconds.

The component configs are the ones diffusers' own fast pipeline tests use (tests/pipelines/
kandinsky2_2, stable_unclip, pixart_alpha, stable_diffusion_3): tiny widths, one or two layers.
Their tokenizers come from the hub there; here they are built offline (a byte-level CLIP
tokenizer, a word-level T5 tokenizer), which is all random weights need.
"""
from __future__ import annotations

from pathlib import Path


def _clip_tokenizer(folder: Path):
    from engines.diffusion.random_weights import _tokenizer

    return _tokenizer(folder)


def _t5_tokenizer(folder: Path):
    """A T5 tokenizer without sentencepiece: a unigram vocabulary of 1,000 pieces (letters,
    then made-up words), which is all a random encoder needs."""
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(letter, -3.0) for letter in "abcdefghijklmnopqrstuvwxyz"]
    pieces += [(f"\u2581w{i}", -4.0) for i in range(1000 - len(pieces))]
    tokenizer = T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=32)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(folder)
    return T5TokenizerFast.from_pretrained(folder)


def _t5_encoder():
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=1000, d_model=32, d_kv=8, d_ff=37, num_layers=2,
                                   num_heads=4, relative_attention_num_buckets=8))


def _clip_text(tokenizer, projection: bool, hidden: int = 32, projection_dim: int = 32):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=37,
                            num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
                            projection_dim=projection_dim, bos_token_id=tokenizer.bos_token_id,
                            eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def _clip_vision(image_size: int, patch: int, hidden: int = 32):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    return CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=hidden, projection_dim=hidden, num_hidden_layers=2, num_attention_heads=4,
        image_size=image_size, intermediate_size=37, patch_size=patch, num_channels=3))


def build_kandinsky22(folder: Path) -> Path:
    """KandinskyV22CombinedPipeline: prior (text -> CLIP image embedding) + decoder (movq)."""
    import torch
    from diffusers import (DDIMScheduler, KandinskyV22CombinedPipeline, PriorTransformer,
                           UnCLIPScheduler, UNet2DConditionModel, VQModel)
    from transformers import CLIPImageProcessor

    torch.manual_seed(0)
    tokenizer = _clip_tokenizer(folder / "prior_tokenizer")
    prior = PriorTransformer(num_attention_heads=2, attention_head_dim=12, embedding_dim=32,
                             num_layers=1)
    prior.clip_std = torch.nn.Parameter(torch.ones(prior.clip_std.shape))  # as diffusers' tests
    unet = UNet2DConditionModel(
        in_channels=4, out_channels=8, addition_embed_type="image",
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn", block_out_channels=(32, 64),
        layers_per_block=1, encoder_hid_dim=32, encoder_hid_dim_type="image_proj",
        cross_attention_dim=32, attention_head_dim=4, resnet_time_scale_shift="scale_shift",
        class_embed_type=None, sample_size=8)
    movq = VQModel(block_out_channels=[32, 64],
                   down_block_types=["DownEncoderBlock2D", "AttnDownEncoderBlock2D"],
                   in_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=8,
                   norm_type="spatial", num_vq_embeddings=12, out_channels=3,
                   up_block_types=["AttnUpDecoderBlock2D", "UpDecoderBlock2D"], vq_embed_dim=4)
    pipe = KandinskyV22CombinedPipeline(
        unet=unet, movq=movq,
        scheduler=DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear",
                                beta_start=0.00085, beta_end=0.012, clip_sample=False,
                                set_alpha_to_one=False, steps_offset=1),
        prior_prior=prior, prior_image_encoder=_clip_vision(224, 14),
        prior_text_encoder=_clip_text(tokenizer, projection=True), prior_tokenizer=tokenizer,
        prior_scheduler=UnCLIPScheduler(variance_type="fixed_small_log", prediction_type="sample",
                                        num_train_timesteps=1000, clip_sample=True,
                                        clip_sample_range=10.0),
        prior_image_processor=CLIPImageProcessor(
            crop_size=224, do_center_crop=True, do_normalize=True, do_resize=True,
            image_mean=[0.48145466, 0.4578275, 0.40821073],
            image_std=[0.26862954, 0.26130258, 0.27577711], resample=3, size=224))
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def build_unclip_img2img(folder: Path) -> Path:
    """StableUnCLIPImg2ImgPipeline: a CLIP image embedding, noised, conditions an SD 2 UNet."""
    import torch
    from diffusers import StableUnCLIPImg2ImgPipeline
    from transformers import CLIPImageProcessor

    torch.manual_seed(0)
    pipe = StableUnCLIPImg2ImgPipeline(
        feature_extractor=CLIPImageProcessor(crop_size=32, size=32),
        image_encoder=_clip_vision(32, 4), **_unclip_decoder(folder))
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def _unclip_decoder(folder: Path) -> dict:
    """What both unCLIP pipelines share: an SD 2 v-prediction UNet whose class embedding takes
    the noised CLIP image embedding, its text encoder, VAE and schedulers."""
    from diffusers import DDIMScheduler, DDPMScheduler, UNet2DConditionModel
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import \
        StableUnCLIPImageNormalizer

    from small_pipelines import _vae

    tokenizer = _clip_tokenizer(folder / "tokenizer")
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), block_out_channels=(32, 64),
        attention_head_dim=(2, 4), class_embed_type="projection",
        projection_class_embeddings_input_dim=64, cross_attention_dim=32, layers_per_block=1,
        upcast_attention=True, use_linear_projection=True, norm_num_groups=8)
    return dict(
        image_normalizer=StableUnCLIPImageNormalizer(32),
        image_noising_scheduler=DDPMScheduler(beta_schedule="squaredcos_cap_v2"),
        tokenizer=tokenizer, text_encoder=_clip_text(tokenizer, projection=False), unet=unet,
        scheduler=DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                prediction_type="v_prediction", set_alpha_to_one=False,
                                steps_offset=1),
        vae=_vae())


def build_pixart(folder: Path, sigma: bool = False) -> Path:
    """PixArt-α (or Σ): a DiT over SD's VAE latents, conditioned on T5."""
    import torch
    from diffusers import (DDIMScheduler, PixArtAlphaPipeline, PixArtSigmaPipeline,
                           PixArtTransformer2DModel)

    from small_pipelines import _vae

    torch.manual_seed(0)
    tokenizer = _t5_tokenizer(folder / "tokenizer")
    transformer = PixArtTransformer2DModel(
        sample_size=8, num_layers=2, patch_size=2, attention_head_dim=8, num_attention_heads=3,
        caption_channels=32, in_channels=4, cross_attention_dim=24, out_channels=8,
        attention_bias=True, activation_fn="gelu-approximate", num_embeds_ada_norm=1000,
        norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6)
    cls = PixArtSigmaPipeline if sigma else PixArtAlphaPipeline
    pipe = cls(transformer=transformer, vae=_vae(), scheduler=DDIMScheduler(),
               text_encoder=_t5_encoder(), tokenizer=tokenizer)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def build_sd3(folder: Path) -> Path:
    """Stable Diffusion 3: an MMDiT, two CLIP encoders and T5, flow matching."""
    import torch
    from diffusers import (AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel,
                           StableDiffusion3Pipeline)

    torch.manual_seed(0)
    tokenizer = _clip_tokenizer(folder / "tokenizer")
    tokenizer_2 = _clip_tokenizer(folder / "tokenizer_2")
    tokenizer_3 = _t5_tokenizer(folder / "tokenizer_3")
    transformer = SD3Transformer2DModel(
        sample_size=32, patch_size=1, in_channels=16, num_layers=1, attention_head_dim=8,
        num_attention_heads=4, caption_projection_dim=32, joint_attention_dim=32,
        pooled_projection_dim=64, out_channels=16)  # SD3's 16 latent channels (its inpainting needs them)
    vae = AutoencoderKL(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4,),
                        layers_per_block=1, latent_channels=16, norm_num_groups=1,
                        use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609,
                        scaling_factor=1.5035)
    pipe = StableDiffusion3Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, transformer=transformer,
        text_encoder=_clip_text(tokenizer, True), text_encoder_2=_clip_text(tokenizer_2, True),
        text_encoder_3=_t5_encoder(), tokenizer=tokenizer, tokenizer_2=tokenizer_2,
        tokenizer_3=tokenizer_3)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def build_stable_unclip(folder: Path) -> Path:
    """StableUnCLIPPipeline: a prior (text -> CLIP image embedding) + an SD 2 decoder."""
    import torch
    from diffusers import DDPMScheduler, PriorTransformer, StableUnCLIPPipeline

    torch.manual_seed(0)
    prior_tokenizer = _clip_tokenizer(folder / "prior_tokenizer")
    pipe = StableUnCLIPPipeline(
        prior_tokenizer=prior_tokenizer,
        prior_text_encoder=_clip_text(prior_tokenizer, projection=True),
        prior=PriorTransformer(num_attention_heads=2, attention_head_dim=12, embedding_dim=32,
                               num_layers=1),
        prior_scheduler=DDPMScheduler(variance_type="fixed_small_log", prediction_type="sample",
                                      num_train_timesteps=1000, clip_sample=True,
                                      clip_sample_range=5.0, beta_schedule="squaredcos_cap_v2"),
        **_unclip_decoder(folder))
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def build_lcm(folder: Path) -> Path:
    """LatentConsistencyModelPipeline: an SD UNet distilled with the guidance as an input."""
    import torch
    from diffusers import LatentConsistencyModelPipeline, LCMScheduler, UNet2DConditionModel

    from small_pipelines import _vae

    torch.manual_seed(0)
    tokenizer = _clip_tokenizer(folder / "tokenizer")
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=4,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
        norm_num_groups=8, time_cond_proj_dim=32)
    pipe = LatentConsistencyModelPipeline(
        vae=_vae(), text_encoder=_clip_text(tokenizer, projection=False), tokenizer=tokenizer,
        unet=unet, scheduler=LCMScheduler(beta_start=0.00085, beta_end=0.012,
                                          beta_schedule="scaled_linear", clip_sample=False,
                                          set_alpha_to_one=False),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def build_sd_turbo(folder: Path) -> Path:
    """An SD-Turbo-shaped folder: the tiny SD with SD-Turbo's trailing-timestep Euler scheduler."""
    import json

    from engines.diffusion.random_weights import build_random_sd

    build_random_sd(folder, "tiny")
    config_path = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(config_path.read_text())
    config.update(_class_name="EulerDiscreteScheduler", timestep_spacing="trailing")
    config_path.write_text(json.dumps(config, indent=2))
    return folder


def build_pixart_sigma(folder: Path) -> Path:
    return build_pixart(folder, sigma=True)


def build_sdxl_refiner(folder: Path) -> Path:
    """An SDXL refiner shaped like tests/small_pipelines.build_sdxl_shaped's base: only the
    second text encoder, aesthetic-score time ids (5 instead of 6)."""
    import torch
    from diffusers import StableDiffusionXLImg2ImgPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from small_pipelines import _scheduler, _vae

    torch.manual_seed(1)
    tokenizer_2 = _clip_tokenizer(folder / "tokenizer_2")
    text_2 = CLIPTextModelWithProjection(CLIPTextConfig(
        vocab_size=len(tokenizer_2), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, projection_dim=16,
        bos_token_id=tokenizer_2.bos_token_id, eos_token_id=tokenizer_2.eos_token_id,
        pad_token_id=tokenizer_2.pad_token_id))
    unet = UNet2DConditionModel(
        sample_size=16, block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
        attention_head_dim=(2, 4), use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=16 + 5 * 8)
    pipe = StableDiffusionXLImg2ImgPipeline(
        vae=_vae(), text_encoder=None, text_encoder_2=text_2, tokenizer=None,
        tokenizer_2=tokenizer_2, unet=unet, scheduler=_scheduler(),
        requires_aesthetics_score=True, force_zeros_for_empty_prompt=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def build_sd_inpaint(folder: Path) -> Path:
    """An SD inpainting checkpoint: the tiny SD with a 9-channel UNet (latents, mask, masked
    image latents), saved as StableDiffusionInpaintPipeline."""
    import torch
    from diffusers import StableDiffusionInpaintPipeline, UNet2DConditionModel

    from engines.diffusion.random_weights import ARCHITECTURES, build_random_sd

    build_random_sd(folder, "tiny")
    torch.manual_seed(0)
    pipe = StableDiffusionInpaintPipeline.from_pretrained(folder, local_files_only=True)
    pipe.unet = UNet2DConditionModel(**dict(ARCHITECTURES["tiny"]["unet"], in_channels=9))
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder
