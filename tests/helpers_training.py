"""Tiny base models and data files for the training tests.

The base model is built with transformers' own config classes and saved with
``save_pretrained``; its tokenizer is a byte-level BPE trained with the
tokenizers library, so the fixtures do not depend on the code under test.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

CORPUS = [
    "the cat sat on the mat. the dog sat on the log.",
    "once upon a time there was a small red fox who liked to run.",
    "a b c d e f g h i j k l m n o p q r s t u v w x y z",
    "one two three four five six seven eight nine ten.",
]


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    return tok


def make_base(folder: Path, family: str = "llama", seed: int = 0) -> Path:
    """A tiny random transformers model + tokenizer saved into ``folder`` (HF layout)."""
    import transformers as tf

    folder = Path(folder)
    tok = build_tokenizer()
    fast = tf.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    V = tok.get_vocab_size()
    torch.manual_seed(seed)
    if family == "gpt2":
        cfg = tf.GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=64, eos_token_id=0,
                            bos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        model = tf.GPT2LMHeadModel(cfg)
    else:
        cfg = tf.LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                             tie_word_embeddings=False, eos_token_id=0, bos_token_id=None, pad_token_id=0)
        model = tf.LlamaForCausalLM(cfg)
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def write_text(path: Path, repeat: int = 30) -> Path:
    """Plain text: blank-line separated documents the tiny model can learn within a few steps."""
    docs = [CORPUS[i % len(CORPUS)] for i in range(repeat)]
    Path(path).write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return Path(path)


def write_jsonl(path: Path, n: int = 24) -> Path:
    rows = [{"prompt": f"count {i % 5}", "completion": " ".join(["one", "two", "three", "four", "five"][: i % 5 + 1])}
            for i in range(n)]
    Path(path).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return Path(path)
