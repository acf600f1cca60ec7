"""Shared code for the RLHF toolkit scripts: devices, data schemas, model loading, the embedded default.

Kept import-light on purpose: modules import torch / transformers / datasets inside functions, so every
script's ``--help`` answers without loading the heavy stack.
"""

__version__ = "0.1.0"
