"""Shared test fixtures: small model folders in a throwaway LMSTUDIO_LITE_HOME, and a real
uvicorn server in a thread on a free port with a readiness wait.

Import the fixtures into a test module (``from fixtures_models import model_home, ...``).

Models (all with stories260K's tokenizer):
- ``stories260K``: the real tiny Llama, no chat template.
- ``tiny-chat``: the same weights plus a ChatML-like chat template.
- ``slow-chat`` (fixture ``slow_chat``): random weights, 6 layers x 384 wide, a 4,096-token
  context, EOS never chosen greedily: long replies slow enough to interrupt mid-stream.
"""
from __future__ import annotations

import contextlib
import json
import shutil
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from shared_data import MODELS  # noqa: E402
if not MODELS.is_dir():  # CI keeps ../shared beside the checkout
    MODELS = Path(__file__).resolve().parents[2] / "shared" / "data" / "models"
STORIES = MODELS / "stories260K"
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def copy_with_template(src: Path, dest: Path, template: str = CHATML) -> Path:
    """A copy of a model folder whose tokenizer_config.json carries ``template``."""
    shutil.copytree(src, dest)
    cfg_path = dest / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["chat_template"] = template
    cfg_path.write_text(json.dumps(cfg, indent=2))
    return dest


def build_random_llama(dest: Path, tokenizer_from: Path, d_model: int = 384, n_layer: int = 6,
                       d_ff: int = 1024, n_head: int = 6, n_kv_head: int = 2, context: int = 4096,
                       seed: int = 0) -> Path:
    """A random-weight Llama folder saved by our own checkpoint writer.

    The EOS embedding row is zeroed (the head is tied), so its logit is exactly 0 while
    the largest of the others is positive: greedy decoding never stops on EOS."""
    import torch

    from lmstudio_lite.checkpoints.folder import save_folder
    from lmstudio_lite.checkpoints.tokenizer import Tokenizer
    from lmstudio_lite.model.config import ModelConfig
    from lmstudio_lite.model.transformer import Transformer

    tok = Tokenizer.from_folder(tokenizer_from)
    cfg = ModelConfig(family="llama", vocab_size=tok.vocab_size, n_layer=n_layer, n_head=n_head,
                      n_kv_head=n_kv_head, d_model=d_model, d_ff=d_ff, max_seq_len=context)
    torch.manual_seed(seed)
    model = Transformer(cfg)
    model.init_weights(std=0.5)  # large enough that logits are far from uniform
    # Byte-fallback pieces (<0x..>) are barred too: random bytes are rarely valid UTF-8.
    barred = set(tok.eos_ids) | {i for i in range(tok.vocab_size)
                                 if (tok.backend.id_to_token(i) or "").startswith("<0x")}
    with torch.no_grad():
        for i in barred:
            model.tok_emb.weight[i].zero_()
    return save_folder(model, dest, tokenizer=tok, model_type="llama")


@pytest.fixture(scope="session")
def model_home(tmp_path_factory) -> Path:
    """An LMSTUDIO_LITE_HOME whose models/ holds stories260K and tiny-chat."""
    home = tmp_path_factory.mktemp("home")
    models = home / "models"
    models.mkdir()
    shutil.copytree(STORIES, models / "stories260K")
    copy_with_template(STORIES, models / "tiny-chat")
    return home


@pytest.fixture(scope="session")
def slow_chat(model_home) -> Path:
    """Adds the ``slow-chat`` random model to model_home; -> its folder."""
    return build_random_llama(model_home / "models" / "slow-chat", model_home / "models" / "tiny-chat")


def make_services(home: Path, api_key: str | None = None, load: str | None = None):
    """Services over ``home`` only (no bundled models, no Hugging Face cache), on the CPU in float32."""
    from lmstudio_lite.paths import app_paths
    from lmstudio_lite.services.registry import Registry
    from lmstudio_lite.services import Services

    paths = app_paths(home).ensure()
    empty = home / "no-bundled-models"
    empty.mkdir(exist_ok=True)
    registry = Registry(paths, bundled=empty, hf_dirs=[], device="cpu", dtype="float32")
    if load:
        registry.load(load)
    return Services(paths, registry, api_key=api_key)


def wait_ready(url: str, timeout: float = 60.0, thread: threading.Thread | None = None):
    """Poll ``url`` until it answers 200 (never a fixed sleep)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if thread is not None and not thread.is_alive():
            raise RuntimeError("the server thread exited")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise TimeoutError(url)


@contextlib.contextmanager
def serve_in_thread(app, ready_path: str = "/healthz"):
    """Run ``app`` with uvicorn in a thread on a free port; yields the base URL."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # the OS picks a free port; uvicorn serves on this very socket
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base + ready_path, thread=thread)
        yield base
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def own_logprobs(model, ids: list[int], kv_dtype) -> "torch.Tensor":
    """An inference model's log-probabilities [T, V] after each token of ``ids``, from one prefill
    into a KV cache of ``kv_dtype``: a scheduler's pool's (a float32 model keeps float16 K/V and
    reads them back rounded), the reference its chunks, packing and prompt cache must equal."""
    import torch

    from lmstudio_lite.model import KVCache

    cache = KVCache(model.config, 1, len(ids), dtype=kv_dtype)
    with torch.inference_mode():
        logits = model(torch.tensor([ids]), 0, cache)
    return torch.log_softmax(logits[0].float(), dim=-1)
