"""In-process generation engines. No Gradio imports here.

torch spins its OpenMP threads while waiting by default; on a small shared CPU that slows
generation 10-50x as soon as anything else runs, so the passive policy is set before any engine
module gets the chance to import torch.
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
