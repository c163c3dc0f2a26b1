"""sd-webui-controlnet's control modes on diffusers' ControlNets (no UNet maths here).

The extension (scripts/hook.py, scripts/controlnet.py) turns a unit's mode into two switches:

    mode                           soft layer scales   residuals on the negative prompt's half
    Balanced                       no                  yes (both halves of the CFG batch)
    My prompt is more important    yes                 yes
    ControlNet is more important   yes                 no (the prompt's half only)

Soft scales weaken the shallow residuals and keep the deep ones: the extension multiplies the 13
residuals of an SD 1.5 ControlNet by weight x 0.825 ** (12 - i); diffusers' ControlNetModel does
the same in its `guess_mode` with weight x 10 ** (i / n - 1), 0.1 for the first residual to 1.0
for the mid block's (n + 1 residuals). 0.825 ** 12 = 0.0994, so on SD 1.5 the two agree to
within 0.6 % on every layer, and diffusers' version also fits models with other depths (the
embedded one, SDXL).

"ControlNet is more important" on every unit is exactly diffusers' pipeline `guess_mode`: the
ControlNet runs on the prompt's half of the batch only and the negative half gets zeros.
Any other mix runs through `ModeControlNets`, a MultiControlNetModel whose forward hands each
net its own soft switch (diffusers' `guess_mode` argument of ControlNetModel.forward) and zeroes
the negative half of the residuals for the nets that steer the prompt's half only.

    guess, controlnet = controlnet_for_modes(models, modes, cfg)
"""
from __future__ import annotations

from functools import cache

BALANCED, PROMPT, CONTROL = ("Balanced", "My prompt is more important",
                             "ControlNet is more important")
CONTROL_MODES = (BALANCED, PROMPT, CONTROL)  # the extension's order: 0, 1, 2 in its API


def soft_scales(mode: str) -> bool:
    """The extension's `soft_injection`: every mode but Balanced."""
    return mode != BALANCED


def prompt_half_only(mode: str) -> bool:
    """The extension's `cfg_injection`: the control acts on the prompt's half of the batch."""
    return mode == CONTROL


@cache
def _modes_class():
    """ModeControlNets, defined on first use (diffusers is imported only when a run needs it)."""
    import torch
    from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel

    class ModeControlNets(MultiControlNetModel):
        """diffusers' MultiControlNetModel with a control mode per net. `cfg`: the batch is
        [negative rows, prompt rows] (diffusers' order when guidance is on)."""

        def __init__(self, controlnets, modes, cfg: bool):
            super().__init__(controlnets)
            self.modes = list(modes)
            self.cfg = cfg

        def forward(self, sample, timestep, encoder_hidden_states, controlnet_cond,
                    conditioning_scale, guess_mode: bool = False, return_dict: bool = True,
                    **kwargs):
            down_total, mid_total = None, None
            for net, image, scale, mode in zip(self.nets, controlnet_cond, conditioning_scale,
                                               self.modes):
                down, mid = net(sample, timestep, encoder_hidden_states, image, scale,
                                guess_mode=soft_scales(mode), return_dict=False, **kwargs)
                if prompt_half_only(mode) and self.cfg:
                    # as diffusers' guess mode pads them: zeros on the negative prompt's rows
                    keep = torch.ones(sample.shape[0], 1, 1, 1, device=mid.device, dtype=mid.dtype)
                    keep[: sample.shape[0] // 2] = 0
                    down, mid = [d * keep for d in down], mid * keep
                if down_total is None:
                    down_total, mid_total = list(down), mid
                else:
                    down_total = [a + b for a, b in zip(down_total, down)]
                    mid_total = mid_total + mid
            return down_total, mid_total

    return ModeControlNets


def controlnet_for_modes(models: list, modes: list[str], cfg: bool):
    """(pipeline guess_mode, the pipeline's `controlnet`) for the units' models and modes.
    Balanced everywhere: the plain ControlNet (one) or diffusers' list (several); "ControlNet is
    more important" everywhere: the same with diffusers' guess mode; any other mix: one
    ModeControlNets (the pipeline's guess mode off, each net's mode applied inside)."""
    unknown = [m for m in modes if m not in CONTROL_MODES]
    if unknown:
        raise ValueError(f"unknown control mode {unknown[0]!r}; known: {', '.join(CONTROL_MODES)}")
    plain = models[0] if len(models) == 1 else list(models)
    if all(m == BALANCED for m in modes):
        return False, plain
    if all(m == CONTROL for m in modes):
        return True, plain
    return False, _modes_class()(list(models), modes, cfg)
