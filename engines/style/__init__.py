"""Style-transfer engine: `engine.py` (StyleEngine, params, style folders), `net.py` (CycleGAN
generator and checkpoint layouts), `arbitrary.py` (Magenta arbitrary style on ONNX).

Empty on purpose: importing a submodule must not import torch."""
