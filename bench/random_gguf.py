"""A random-weight Llama GGUF that llama.cpp and we both load (``bench/decode.py --peer llama.cpp --shape 1b``).

The 1B shape of the issue: 2048 wide, 16 layers, 32 query / 8 key-value heads,
5632 FFN, vocabulary 32000, untied head; float32 weights of std 0.02 (norms 1).
Its tokenizer is a stand-in SentencePiece vocabulary (unk, bos, eos, the 256 byte
tokens, then placeholder pieces): llama.cpp needs one to load, and decode speed
does not depend on which pieces they are.
"""
from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

SHAPE_1B = dict(d_model=2048, n_layer=16, n_head=32, n_kv_head=8, d_ff=5632, vocab=32000)


def write_random_llama(path: Path, d_model: int, n_layer: int, n_head: int, n_kv_head: int, d_ff: int, vocab: int,
                       seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    D = d_model // n_head

    def w(rows: int, cols: int) -> np.ndarray:  # numpy [rows, cols] = GGUF [out, in]
        return (rng.standard_normal((rows, cols), dtype=np.float32) * 0.02).astype(np.float32)

    out = gguf.GGUFWriter(str(path), "llama")
    out.add_name("random-llama-1b")
    out.add_context_length(2048)
    out.add_embedding_length(d_model)
    out.add_block_count(n_layer)
    out.add_feed_forward_length(d_ff)
    out.add_head_count(n_head)
    out.add_head_count_kv(n_kv_head)
    out.add_rope_dimension_count(D)
    out.add_layer_norm_rms_eps(1e-5)
    out.add_rope_freq_base(10000.0)
    out.add_file_type(gguf.LlamaFileType.ALL_F32)
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    tokens += [f"\u2581p{i}" for i in range(vocab - len(tokens))]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL] + [gguf.TokenType.BYTE] * 256
    types += [gguf.TokenType.NORMAL] * (vocab - len(types))
    out.add_tokenizer_model("llama")
    out.add_token_list(tokens)
    out.add_token_scores([-float(i) for i in range(vocab)])
    out.add_token_types(types)
    out.add_bos_token_id(1)
    out.add_eos_token_id(2)
    out.add_unk_token_id(0)
    ones = np.ones(d_model, dtype=np.float32)
    out.add_tensor("token_embd.weight", w(vocab, d_model))
    for i in range(n_layer):
        out.add_tensor(f"blk.{i}.attn_norm.weight", ones)
        out.add_tensor(f"blk.{i}.attn_q.weight", w(n_head * D, d_model))
        out.add_tensor(f"blk.{i}.attn_k.weight", w(n_kv_head * D, d_model))
        out.add_tensor(f"blk.{i}.attn_v.weight", w(n_kv_head * D, d_model))
        out.add_tensor(f"blk.{i}.attn_output.weight", w(d_model, n_head * D))
        out.add_tensor(f"blk.{i}.ffn_norm.weight", ones)
        out.add_tensor(f"blk.{i}.ffn_gate.weight", w(d_ff, d_model))
        out.add_tensor(f"blk.{i}.ffn_up.weight", w(d_ff, d_model))
        out.add_tensor(f"blk.{i}.ffn_down.weight", w(d_model, d_ff))
    out.add_tensor("output_norm.weight", ones)
    out.add_tensor("output.weight", w(vocab, d_model))
    out.write_header_to_file()
    out.write_kv_data_to_file()
    out.write_tensors_to_file()
    out.close()
    return path


if __name__ == "__main__":
    import sys

    print(write_random_llama(Path(sys.argv[1]), **SHAPE_1B))
