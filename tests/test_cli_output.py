"""What the CLI prints (D12): `generate` never ends with nothing said, `generate --chat` answers an
instruction, and `lmstudio-lite models` keeps its columns aligned whatever the names."""
from __future__ import annotations

from lmstudio_lite.cli import main
from lmstudio_lite.services.registry import ModelEntry, entries_table

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


def test_generate_json_prints_logprobs(capsys, monkeypatch, tmp_path):
    import json
    import math

    monkeypatch.setenv("LMSTUDIO_LITE_HOME", str(tmp_path))
    assert main(["generate", "--prompt", "Once upon a time", "--max-new-tokens", "5", "--ignore-eos", "--json",
                 "--logprobs", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    lps = out["logprobs"]
    assert [e["id"] for e in lps] == out["new_ids"] and "".join(e["token"] for e in lps) == out["text"]
    for e in lps:  # greedy: the chosen token is the most likely one; probabilities of alternatives are below 1
        assert len(e["top_logprobs"]) == 2 and e["top_logprobs"][0]["id"] == e["id"]
        assert e["logprob"] == e["top_logprobs"][0]["logprob"] <= 0
        assert math.exp(e["top_logprobs"][0]["logprob"]) + math.exp(e["top_logprobs"][1]["logprob"]) <= 1 + 1e-6
    assert main(["generate", "--prompt", "x", "--logprobs", "2"]) == 2
    assert "--logprobs needs --json" in capsys.readouterr().err
