"""The pure-torch transformer: config, layers, KV cache, LoRA."""
from .config import ModelConfig
from .kv_cache import KVCache
from .transformer import Transformer

__all__ = ["ModelConfig", "KVCache", "Transformer"]
