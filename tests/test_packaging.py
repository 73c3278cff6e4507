"""A built wheel works outside the repository: it carries the bundled model and the samples.

The wheel is installed with ``--no-deps`` into a fresh venv that sees this interpreter's
site-packages (torch, gradio...), so nothing is downloaded; the commands then run from an
empty folder, where the repository's ``models/`` and ``assets/`` cannot be reached.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow  # builds and installs a 14 MB wheel: ~30 s on 2 cores


def run(cmd, cwd, env, timeout=300):
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{cmd} failed:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """-> (venv bin folder, environment for running from an empty folder)."""
    root = tmp_path_factory.mktemp("wheel")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    # Build from a copy: pip builds in the source tree, and a stale build/ there could leak into the wheel.
    src = root / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", "build", "dist", "tmp", "runs", "*.egg-info",
                                                             "__pycache__", ".pytest_cache", ".venv"))
    run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
         "-w", str(root / "dist")], cwd=root, env=env)
    wheel = next((root / "dist").glob("lmstudio_lite-*.whl"))
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(root / "venv")
    bin_dir = root / "venv" / "bin"
    run([sys.executable, "-m", "pip", "--python", str(bin_dir / "python"), "install", "--no-deps",
         "--no-index", str(wheel)], cwd=root, env=env)
    empty = root / "empty"
    empty.mkdir()
    env.update(LMSTUDIO_LITE_HOME=str(root / "home"), PATH=f"{bin_dir}{os.pathsep}{env['PATH']}",
               HF_HUB_CACHE=str(root / "no-hf-cache"))
    return bin_dir, empty, env


def test_wheel_imports_its_own_copy(installed):
    bin_dir, empty, env = installed
    out = run([str(bin_dir / "python"), "-c", "import lmstudio_lite; print(lmstudio_lite.__file__)"],
              cwd=empty, env=env).stdout
    assert str(bin_dir.parent) in out, f"the test must exercise the installed wheel, imported {out}"


def test_installed_wheel_lists_the_bundled_model(installed):
    bin_dir, empty, env = installed
    out = run([str(bin_dir / "lmstudio-lite"), "models", "--json"], cwd=empty, env=env).stdout
    bundled = [e for e in json.loads(out) if e["source"] == "bundled"]
    assert [e["name"] for e in bundled] == ["lmstudio-lite-tiny"]
    assert bundled[0]["error"] is None
    assert str(bin_dir.parent) in bundled[0]["path"]


def test_installed_wheel_generates_with_the_default_model(installed):
    bin_dir, empty, env = installed
    done = run([str(bin_dir / "lmstudio-lite"), "generate", "--prompt", "Once upon a time",
                "--max-new-tokens", "8"], cwd=empty, env=env)
    assert done.stdout.strip(), done.stderr
    assert "8 tokens" in done.stderr


def test_installed_wheel_carries_the_samples(installed):
    bin_dir, empty, env = installed
    code = "from lmstudio_lite.services.train_actions import list_samples; print(sorted(list_samples()))"
    out = run([str(bin_dir / "python"), "-c", code], cwd=empty, env=env).stdout
    assert "sample_stories.txt" in out and "sample_chat.jsonl" in out


def test_installed_wheel_carries_the_ui_strings(installed):
    bin_dir, empty, env = installed
    code = ("from lmstudio_lite.ui import i18n; "
            "print(i18n.LOCALES.parent.parent.parent, i18n.tr('zh-CN', 'tab.models'), len(i18n.strings('en')))")
    where, models, count = run([str(bin_dir / "python"), "-c", code], cwd=empty, env=env).stdout.split()
    assert str(bin_dir.parent) in where and models == "模型" and int(count) > 50
