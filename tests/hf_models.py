"""Tiny random-weight reference models built with transformers config classes."""
from __future__ import annotations

import torch

VOCAB = 96


def build(kind: str):
    """(transformers model in eval mode, short description) for one supported variant."""
    import transformers as tf

    torch.manual_seed(0)
    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  max_position_embeddings=128, initializer_range=0.2, bos_token_id=1, eos_token_id=2)
    if kind == "gpt2":
        cfg = tf.GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=128,
                            initializer_range=0.2, bos_token_id=1, eos_token_id=2)
        model = tf.GPT2LMHeadModel(cfg)
    elif kind == "llama-gqa-untied":
        model = tf.LlamaForCausalLM(tf.LlamaConfig(num_attention_heads=4, num_key_value_heads=2,
                                                   tie_word_embeddings=False, **common))
    elif kind == "llama-rope-linear":
        model = tf.LlamaForCausalLM(tf.LlamaConfig(num_attention_heads=4, num_key_value_heads=4,
                                                   tie_word_embeddings=True,
                                                   rope_scaling={"rope_type": "linear", "factor": 4.0}, **common))
    elif kind == "llama-rope-llama3":
        model = tf.LlamaForCausalLM(tf.LlamaConfig(
            num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=True, rope_theta=500000.0,
            rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                          "original_max_position_embeddings": 32}, **common))
    elif kind == "qwen2":
        model = tf.Qwen2ForCausalLM(tf.Qwen2Config(num_attention_heads=4, num_key_value_heads=2,
                                                   tie_word_embeddings=False, **common))
    elif kind == "mistral":
        model = tf.MistralForCausalLM(tf.MistralConfig(num_attention_heads=4, num_key_value_heads=2,
                                                       tie_word_embeddings=False, sliding_window=None, **common))
    else:
        raise KeyError(kind)
    return model.eval()


KINDS = ["gpt2", "llama-gqa-untied", "llama-rope-linear", "llama-rope-llama3", "qwen2", "mistral"]


def hf_greedy(model, ids: list[int], n: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                             pad_token_id=0, eos_token_id=None)
    return out[0, len(ids):].tolist()
