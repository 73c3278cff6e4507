"""What the CLI prints (D12): `generate` never ends with nothing said, `generate --chat` answers an
instruction, and `lmstudio-lite models` keeps its columns aligned whatever the names."""
from __future__ import annotations

from lmstudio_lite.cli import main
from lmstudio_lite.registry import ModelEntry, entries_table

DOG = "Tell me a story about a little dog."


def test_generate_explains_an_empty_continuation(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("LMSTUDIO_LITE_HOME", str(tmp_path))
    assert main(["generate", "--prompt", DOG, "--max-new-tokens", "8"]) == 0  # no --model: the bundled one
    out, err = capsys.readouterr()
    if not out.strip():  # the bundled story model ends the text after a full stop
        assert "--chat" in err and "no text" in err
    assert main(["generate", "--chat", "--prompt", DOG, "--max-new-tokens", "8"]) == 0
    out, err = capsys.readouterr()
    assert out.strip() and "8 tokens" in err


def test_models_table_columns_align():
    entries = [ModelEntry("tiny", "/m/tiny", "bundled", "llama", 3_400_000, 256),
               ModelEntry("HuggingFaceTB/SmolLM2-135M-Instruct", "/hf/smol", "hf-cache", "llama", 134_500_000, 8192),
               ModelEntry("broken", "/m/broken", "user", error="config.json: file is missing")]
    lines = entries_table(entries).splitlines()
    assert lines[0].split()[:2] == ["NAME", "FAMILY"] and len(lines) == 4
    for column in ("FAMILY", "SOURCE", "PATH"):
        start = lines[0].index(column)
        assert all(line[start - 2:start] == "  " and line[start] != " " for line in lines[1:]), (column, lines)
    assert lines[3].endswith("[config.json: file is missing]")
