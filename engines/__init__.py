"""In-process generation engines. No Gradio imports here.

torch spins its OpenMP threads while waiting by default; on a small shared CPU that slows
generation 10-50x as soon as anything else runs, so the passive policy is set before any engine
module gets the chance to import torch.

transformers 5 swaps some layers of its models on CUDA for "hub kernels" that the `kernels`
package downloads from the Hugging Face Hub and runs. Offline (this studio's normal case) that
fails: on an H200, training a LoRA with the text encoder stopped with "Version 1 of
'kernels-community/activation' is not available in the local cache". Nor should a studio run
code it fetched on its own, so it is off unless the user sets USE_HUB_KERNELS=YES.
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("USE_HUB_KERNELS", "NO")
