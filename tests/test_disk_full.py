"""A full disk names itself and loses nothing: chats, exported model folders and training
checkpoints each fail with "no space left on device: N MB needed" and keep the previous
version. The disk is filled with a file-size limit (RLIMIT_FSIZE) in a child process."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from fixtures_models import STORIES

resource = pytest.importorskip("resource")
REPO = Path(__file__).resolve().parents[1]

CHILD = textwrap.dedent("""
    import json, resource, signal, sys
    from pathlib import Path
    import torch
    from lmstudio_lite.atomic import write_text as atomic_write_text
    from lmstudio_lite.checkpoints.folder import load_weights, save_folder
    from lmstudio_lite.training.checkpointing import save_checkpoint

    out, stories = Path(sys.argv[1]), Path(sys.argv[2])
    model = load_weights(stories)
    weights = {k: v for k, v in model.state_dict().items()}
    (out / "chat.json").write_text("old chat")
    save_checkpoint(out / "run", {"w": torch.zeros(4)}, {"step": 1})  # the previous checkpoint
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # over the limit: EFBIG instead of a kill
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.RLIM_INFINITY))
    results = {}
    for name, save in [("chat", lambda: atomic_write_text(out / "chat.json", "x" * 200_000)),
                       ("export", lambda: save_folder(model, out / "export")),
                       ("checkpoint", lambda: save_checkpoint(out / "run", weights, {"step": 2}))]:
        try:
            save()
            results[name] = "saved"
        except OSError as e:
            results[name] = f"{type(e).__name__}: {e}"
    print(json.dumps(results))
""")


def test_full_disk_names_itself_and_keeps_the_previous_state(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path), str(STORIES)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, message in results.items():
        assert message.startswith("DiskFullError: no space left on device:") and "MB needed" in message, (name,
                                                                                                      message)
    assert (tmp_path / "chat.json").read_text() == "old chat"
    assert not list(tmp_path.glob(".chat.json.*.tmp"))
    assert not (tmp_path / "export" / "model.safetensors").exists()
    assert not list((tmp_path / "export").glob("*.tmp"))
    from safetensors.torch import load_file

    assert list(load_file(tmp_path / "run" / "checkpoint" / "model.safetensors")) == ["w"]  # the old one
    assert not (tmp_path / "run" / "checkpoint.tmp").exists()
