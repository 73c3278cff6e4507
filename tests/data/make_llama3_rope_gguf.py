"""Writes tests/data/llama3-rope-tiny.f32.gguf and its transformers logits (llama3-rope-tiny.logits.json).

A random 2-layer Llama with grouped-query attention, an untied head and Llama 3 rope scaling,
saved by transformers and converted by llama.cpp's own convert_hf_to_gguf.py: the rope scaling
arrives as llama.cpp's ``rope_freqs`` tensor and q/k as its permuted rows. The JSON holds
transformers' logits for IDS (64 tokens, past the 32-token original context the scaling
stretches) so CI checks our loader against both without llama.cpp or the folder.

    python tests/data/make_llama3_rope_gguf.py /path/to/llama.cpp/convert_hf_to_gguf.py
(convert needs the sentencepiece package for stories260K's tokenizer, which the file borrows.)
"""
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import transformers as tf

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from shared_data import STORIES  # noqa: E402

IDS = [1, 5, 77, 300, 12, 499, 42, 7, 256, 3, 90, 91, 92, 400, 401, 8] * 4


def main(convert: str) -> None:
    torch.manual_seed(0)
    cfg = tf.LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         tie_word_embeddings=False, rope_theta=500000.0, initializer_range=0.2,
                         rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                       "high_freq_factor": 4.0, "original_max_position_embeddings": 32},
                         bos_token_id=1, eos_token_id=2)
    model = tf.LlamaForCausalLM(cfg).eval()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "llama3-rope-tiny"
        model.save_pretrained(folder)
        for name in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json"):
            shutil.copy(STORIES / name, folder / name)
        out = HERE / "llama3-rope-tiny.f32.gguf"
        subprocess.run([sys.executable, convert, str(folder), "--outtype", "f32", "--outfile", str(out)], check=True)
    with torch.no_grad():
        logits = model(torch.tensor([IDS])).logits[0]
    ref = {"ids": IDS, "argmax": logits.argmax(-1).tolist(), "last": [round(x, 6) for x in logits[-1].tolist()]}
    (HERE / "llama3-rope-tiny.logits.json").write_text(json.dumps(ref) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
