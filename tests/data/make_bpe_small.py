"""Writes tests/data/bpe-small.gguf: a vocabulary-only GGUF of a small byte-level BPE (1,500 tokens)
trained on ../shared/data lines and our own code, for pre-tokenizer parity with llama.cpp
(bench/gguf_tokenize_parity.py renames its pre-tokenizer to each one we support).
Run from the repository root: python tests/data/make_bpe_small.py"""
import csv, json, sys
sys.path[:0] = [".", "tests"]
import gguf
from lmstudio_lite.checkpoints.tokenizer import train_bpe_tokenizer
from shared_data import SHARED_DATA

texts = []
for pair in ("en_fr", "en_de", "en_zh"):
    with open(SHARED_DATA / f"translation_{pair}.tsv", encoding="utf-8") as f:
        rows = [r for r in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if len(r) >= 2]
    texts += [x for r in rows[::40] for x in r[:2]]
texts += ["In 1969, 12345 people paid $1,000,000.00 for 3.14159 items; it's 2024-11-30 12:34:56."] * 50
texts += open("lmstudio_lite/checkpoints/tokenizer.py").read().splitlines()
specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
tok = train_bpe_tokenizer(texts, 1500, specials)
state = json.loads(tok.to_str())
vocab = sorted(state["model"]["vocab"].items(), key=lambda kv: kv[1])
tokens = [t for t, _ in vocab]
assert [i for _, i in vocab] == list(range(len(vocab)))
merges = [" ".join(m) if isinstance(m, list) else m for m in state["model"]["merges"]]
w = gguf.GGUFWriter("tests/data/bpe-small.gguf", "llama")
for k, v in (("block_count", 1), ("context_length", 64), ("embedding_length", 64), ("feed_forward_length", 64),
             ("attention.head_count", 4)):
    w.add_uint32(f"llama.{k}", v)
w.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
w.add_tokenizer_model("gpt2")
w.add_tokenizer_pre("gpt-2")
w.add_token_list(tokens)
w.add_token_types([3 if t in specials else 1 for t in tokens])
w.add_token_merges(merges)
w.add_bos_token_id(tokens.index("<|endoftext|>"))
w.add_eos_token_id(tokens.index("<|im_end|>"))
w.add_add_bos_token(False)
w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
print(len(tokens), len(merges))
