"""Training speed: our training step against transformers + a plain PyTorch loop, side by side.

    python bench/train.py                 # ~14M-param Llama-shaped model: full + LoRA, fp32 + bf16 autocast
    python bench/train.py --quick         # a tiny shape and 2 timed steps: checks the script runs
    python bench/train.py --modes full --precisions fp32 --steps 5 --threads 1
    python bench/train.py --contention    # chat decode speed while a background job trains (1 vs 2 threads)

Both sides start from the same weights (the transformers model is saved and
loaded into ours), see the same batch shape (batch 8 x 256 tokens by default),
use AdamW with the same settings, clip gradients at 1.0 and step the optimizer
every iteration; steps of the two alternate and the median counts, so load from
other processes hits both sides alike. Ours is ``Trainer.train_step`` itself: schedule, batching,
loss over shifted labels, backward, clipping and the optimizer step. LoRA on
the transformers side is the same math (rank 8, alpha 16 on q/k/v/o) written as
a small wrapper, or PEFT when it is installed. Prints tokens/s and the ratio
ours/transformers for each cell.
"""
from __future__ import annotations

import argparse
import itertools
import math
import os
import statistics
import sys
import tempfile
import time
from types import SimpleNamespace

import torch
import torch.nn as nn

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from lmstudio_lite.checkpoints.folder import load_weights  # noqa: E402
from lmstudio_lite.model.lora import apply_lora  # noqa: E402
from lmstudio_lite.training.data import Example  # noqa: E402
from lmstudio_lite.training.distributed import DistContext  # noqa: E402
from lmstudio_lite.training.spec import TrainSpec  # noqa: E402
from lmstudio_lite.training.trainer import ADAM_BETAS, Hooks, Trainer  # noqa: E402

FULL = dict(n_layer=6, d_model=384, n_head=6, d_ff=1024, block=256, vocab=8192, batch=8)
QUICK = dict(n_layer=2, d_model=128, n_head=4, d_ff=384, block=64, vocab=1024, batch=4)
LORA_RANK, LORA_ALPHA = 8, 16.0


def hf_model(shape: dict):
    import transformers as tf

    torch.manual_seed(0)
    return tf.LlamaForCausalLM(tf.LlamaConfig(
        vocab_size=shape["vocab"], hidden_size=shape["d_model"], intermediate_size=shape["d_ff"],
        num_hidden_layers=shape["n_layer"], num_attention_heads=shape["n_head"],
        num_key_value_heads=shape["n_head"], max_position_embeddings=shape["block"], tie_word_embeddings=True))


class HFLoRA(nn.Module):
    """x W^T + dropout-free (x A^T B^T) * alpha/r around a frozen nn.Linear (PEFT's math)."""

    def __init__(self, base: nn.Linear, r: int, alpha: float):
        super().__init__()
        self.base, self.scale = base, alpha / r
        self.lora_A = nn.Linear(base.in_features, r, bias=False)
        self.lora_B = nn.Linear(r, base.out_features, bias=False)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def forward(self, x):
        return self.base(x) + self.lora_B(self.lora_A(x)) * self.scale


def hf_lora(model):
    try:
        import peft

        cfg = peft.LoraConfig(r=LORA_RANK, lora_alpha=LORA_ALPHA, lora_dropout=0.0,
                              target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
        return peft.get_peft_model(model, cfg), "peft"
    except ImportError:
        for p in model.parameters():
            p.requires_grad_(False)
        for layer in model.model.layers:
            att = layer.self_attn
            for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
                setattr(att, name, HFLoRA(getattr(att, name), LORA_RANK, LORA_ALPHA))
        return model, "wrapper"


def adamw(model, lr=3e-4, wd=0.01):
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2], "weight_decay": wd},
                              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
                             lr=lr, betas=ADAM_BETAS, eps=1e-8)


def interleaved(step_a, step_b, warmup: int, steps: int) -> tuple[float, float]:
    """Median seconds per step of a and b, timed alternately so load from elsewhere hits both alike."""
    for _ in range(warmup):
        step_a()
        step_b()
    ta, tb = [], []
    for _ in range(steps):
        for step, out in ((step_a, ta), (step_b, tb)):
            t = time.perf_counter()
            step()
            out.append(time.perf_counter() - t)
    return statistics.median(ta), statistics.median(tb)


def hf_step(model, batches, device, amp):
    """One plain-PyTorch training step of a transformers model (same optimizer and clipping as ours)."""
    model.train()
    opt = adamw(model)
    it = itertools.cycle(batches)
    params = [p for p in model.parameters() if p.requires_grad]

    def step():
        ids = next(it).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return step


def our_step(folder, shape, lora: bool, device, amp, threads):
    """``Trainer.train_step`` on random token rows of the bench shape."""
    model = load_weights(folder, device=device)
    if lora:
        torch.manual_seed(0)
        apply_lora(model, LORA_RANK, LORA_ALPHA, 0.0, ("q", "k", "v", "o"))
    model.train()
    g = torch.Generator().manual_seed(1)
    rows = [torch.randint(0, shape["vocab"], (shape["block"],), generator=g).tolist() for _ in range(64)]
    data = SimpleNamespace(train=[Example(r, list(r)) for r in rows], val=[])
    spec = TrainSpec(data="bench", base_model=str(folder), steps=10_000, lr=3e-4, batch_size=shape["batch"],
                     seq_len=shape["block"], lora_rank=LORA_RANK if lora else 0, lora_alpha=LORA_ALPHA,
                     warmup_steps=0, threads=threads, eval_every=0, save_every=0)
    built = SimpleNamespace(model=model, tokenizer=SimpleNamespace(pad_id=0, encode=None))
    trainer = Trainer(spec, None, built, data, DistContext(), device, Hooks(), None,
                      torch.bfloat16 if amp else None)

    def step():
        trainer.train_step()
        if device.type == "cuda":
            torch.cuda.synchronize()
    return step


def contention(shape: dict, seconds: float = 8.0):
    """Chat decode tok/s in this (main) thread: alone, then beside a JobRunner job using 1 and 2 threads."""
    from lmstudio_lite import load_model
    from lmstudio_lite.checkpoints.tokenizer import Tokenizer, train_bpe_tokenizer
    from lmstudio_lite.paths import app_paths
    from lmstudio_lite.training.jobs import JobRunner

    tmp = tempfile.mkdtemp()
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "far", "away", "home"]
    g = torch.Generator().manual_seed(0)
    text = "\n\n".join(" ".join(words[i] for i in torch.randint(0, 12, (60,), generator=g).tolist())
                        for _ in range(400))
    data = os.path.join(tmp, "data.txt")
    with open(data, "w") as f:
        f.write(text)
    model_dir = os.path.join(tmp, "base")
    hf_model(shape).save_pretrained(model_dir)
    eos = "<|endoftext|>"
    Tokenizer.from_tokenizers(train_bpe_tokenizer([text], 300, [eos]), eos_token=eos, pad_token=eos).save(model_dir)
    chat = load_model(model_dir, device="cpu", dtype="float32")

    def decode_rate() -> float:
        n, t = 0, time.perf_counter()
        while time.perf_counter() - t < seconds:
            stream = chat.generate("the cat", max_new_tokens=64, ignore_eos=True)
            for _ in stream:  # ids past the small test tokenizer decode to no text: count tokens, not deltas
                pass
            n += stream.stats["new_tokens"]
        return n / (time.perf_counter() - t)

    print(f"chat thread uses {torch.get_num_threads()} threads; decode tok/s:")
    print(f"  alone                    {decode_rate():7.1f}")
    os.environ["LMSTUDIO_LITE_HOME"] = os.path.join(tmp, "home")
    for threads in (1, 2):
        runner = JobRunner(app_paths())
        runner.start(TrainSpec(data=data, base_model=model_dir, steps=100_000, batch_size=shape["batch"],
                               seq_len=shape["block"], eval_every=0, save_every=0, threads=threads))
        while runner.status()["step"] < 2:
            time.sleep(0.05)
        rate = decode_rate()
        train = runner.status()["tokens_per_s"]
        runner.cancel()
        runner.wait()
        print(f"  beside a {threads}-thread job     {rate:7.1f}   (job trains at {train:,.0f} tok/s)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny shape, 1 warm-up + 5 timed steps")
    ap.add_argument("--modes", default="full,lora")
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--contention", action="store_true", help="chat speed beside a training job instead")
    args = ap.parse_args()
    shape = QUICK if args.quick else FULL
    if args.contention:
        torch.set_num_threads(args.threads)
        return contention(shape, seconds=3.0 if args.quick else 8.0)
    steps, warmup = (5, 1) if args.quick else (args.steps, args.warmup)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    B, T = shape["batch"], shape["block"]
    g = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, shape["vocab"], (B, T), generator=g) for _ in range(4)]
    base = hf_model(shape)
    n_params = sum(p.numel() for p in base.parameters())
    print(f"shape {shape}  params {n_params / 1e6:.1f}M  batch {B}x{T}  device {device}  threads {args.threads}  "
          f"torch {torch.__version__}")
    print(f"{'mode':6} {'precision':9} {'ours tok/s':>11} {'hf tok/s':>10} {'ours/hf':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        base.save_pretrained(tmp)
        for mode in args.modes.split(","):
            for prec in args.precisions.split(","):
                amp = prec == "bf16"
                hf = hf_model(shape)
                hf.load_state_dict(base.state_dict())
                if mode == "lora":
                    hf, _ = hf_lora(hf)
                hf.to(device)
                ours_step = our_step(tmp, shape, mode == "lora", device, amp, args.threads)
                t_ours, t_hf = interleaved(ours_step, hf_step(hf, batches, device, amp), warmup, steps)
                del hf, ours_step
                ours, theirs = B * T / t_ours, B * T / t_hf
                print(f"{mode:6} {prec:9} {ours:11,.0f} {theirs:10,.0f} {ours / theirs:8.2f}", flush=True)


if __name__ == "__main__":
    main()
