"""transformers' hub kernels stay off in the studio unless the user turns them on.

On CUDA, transformers 5 swaps some layers for kernels that the `kernels` package downloads from
the Hub and runs; offline that stopped a LoRA training with the text encoder on an H200
(engines/__init__.py). The CPU never takes that path, so this checks the switch itself.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

CODE = ("import engines.diffusion.loading, transformers.integrations.hub_kernels as h; "
        "print(h._kernels_enabled())")


@pytest.mark.parametrize("setting, enabled", [(None, "False"), ("YES", "True")])
def test_hub_kernels_are_off_unless_the_user_sets_them(setting, enabled):
    env = {k: v for k, v in os.environ.items() if k != "USE_HUB_KERNELS"}
    if setting:
        env["USE_HUB_KERNELS"] = setting
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, env=env,
                         cwd=Path(__file__).resolve().parent.parent, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == enabled
