"""The pure-torch transformer: config, layers, KV cache, LoRA, and its inference object.

``ModelConfig`` (``model.config``) needs no torch; the rest is imported on first use, so
reading a config.json (listing models while the page starts) does not import torch.
"""
from .config import ModelConfig

__all__ = ["ModelConfig", "KVCache", "Transformer", "InferenceModel"]


def __getattr__(name: str):
    if name == "KVCache":
        from .kv_cache import KVCache

        return KVCache
    if name == "Transformer":
        from .transformer import Transformer

        return Transformer
    if name == "InferenceModel":
        from .inference import InferenceModel

        return InferenceModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
