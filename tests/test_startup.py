"""The page is built and served before torch is imported (importing it takes seconds): the model
loads in the background afterwards, and the status line says so meanwhile."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

BUILD = textwrap.dedent("""
    import argparse, sys
    from lmstudio_lite.ui import launch
    args = argparse.Namespace(model=sys.argv[1], device=None, dtype=None, quant=None, share=False,
                              host="127.0.0.1", auth=None, api_key=None, insecure_no_auth=False, max_body_mb=None)
    services = launch.make_services(args, None, launch.make_policy(args, None, None))
    launch.create_web_app(services)
    print("loading:", services.loading, "| torch imported:", "torch" in sys.modules)
    services.load_in_background().join()
    print("loaded:", services.registry.current.name, "| torch imported:", "torch" in sys.modules)
""")


def test_the_page_is_built_before_torch_is_imported(ui_models, tmp_path):
    env = {"LMSTUDIO_LITE_HOME": str(tmp_path / "home"), "GRADIO_ANALYTICS_ENABLED": "False",
           "PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", BUILD, str(ui_models["tiny-chat"])], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "loading: tiny-chat | torch imported: False" in out.stdout
    assert "loaded: tiny-chat | torch imported: True" in out.stdout
