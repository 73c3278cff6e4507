"""lmstudio_lite: a local LLM workbench with its own PyTorch GPT engine."""
from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["load_model", "__version__"]


def load_model(path, device=None, dtype=None, quant=None):
    """Load a model folder; see :func:`lmstudio_lite.services.api.load_model`.

    Imported lazily so ``import lmstudio_lite`` (and the CLI's --help) stays fast.
    """
    from .services.api import load_model as _load

    return _load(path, device=device, dtype=dtype, quant=quant)
