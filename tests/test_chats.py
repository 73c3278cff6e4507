"""ChatStore: conversations saved atomically, listed, renamed, deleted, exported and imported."""
from __future__ import annotations

import json
import os

import pytest

from lmstudio_lite.chats import (ChatFormatError, ChatStore, new_conversation, title_from, to_json, to_markdown,
                                 validate)


def _conv(text="Hello there", reply="Hi!"):
    conv = new_conversation(system="Be brief.")
    conv["title"] = title_from(text)
    conv["messages"] += [{"role": "user", "content": text}, {"role": "assistant", "content": reply}]
    return conv


def test_save_load_round_trip(tmp_path):
    store = ChatStore(tmp_path)
    conv = store.save(_conv("Ünïcode ✓ 你好"))
    again = ChatStore(tmp_path).load(conv["id"])  # a fresh store: what a restart sees
    assert again["messages"] == conv["messages"]
    assert again["system"] == "Be brief." and again["title"] == "Ünïcode ✓ 你好"
    assert json.loads((tmp_path / f"{conv['id']}.json").read_text("utf-8"))["id"] == conv["id"]


def test_list_is_newest_first_and_skips_broken_files(tmp_path):
    store = ChatStore(tmp_path)
    a = store.save(_conv("first"))
    b = store.save(_conv("second"))
    b["updated"] = a["updated"] + 10
    (tmp_path / "garbage.json").write_text("{not json")
    os.utime(tmp_path / f"{b['id']}.json")
    store.save(b)
    listed = store.list()
    assert [s["id"] for s in listed] == [b["id"], a["id"]]
    assert listed[0]["turns"] == 2 and listed[0]["title"] == "second"


def test_rename_and_delete(tmp_path):
    store = ChatStore(tmp_path)
    conv = store.save(_conv())
    assert store.rename(conv["id"], "  A   new title ")["title"] == "A new title"
    assert store.load(conv["id"])["title"] == "A new title"
    with pytest.raises(ValueError):
        store.rename(conv["id"], "   ")
    store.delete(conv["id"])
    assert store.list() == []
    with pytest.raises(KeyError):
        store.load(conv["id"])


def test_ids_cannot_escape_the_folder(tmp_path):
    store = ChatStore(tmp_path / "chats")
    for bad in ("../x", "a/b", "", "x" * 100):
        with pytest.raises(KeyError):
            store.load(bad)
        with pytest.raises(KeyError):
            store.delete(bad)


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path, monkeypatch):
    store = ChatStore(tmp_path)
    conv = store.save(_conv("kept"))
    before = (tmp_path / f"{conv['id']}.json").read_text()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    conv["messages"].append({"role": "user", "content": "lost"})
    with pytest.raises(OSError):
        store.save(conv)
    assert (tmp_path / f"{conv['id']}.json").read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == [f"{conv['id']}.json"]  # no temp file left behind


def test_export_formats(tmp_path):
    conv = _conv("What is 2+2?", "4")
    md = to_markdown(conv)
    assert md.startswith("# What is 2+2?") and "**System:**" in md and "## User\n\nWhat is 2+2?" in md
    assert "## Assistant\n\n4" in md
    assert validate(json.loads(to_json(conv)))["messages"] == conv["messages"]


def test_import_json_gets_a_new_id(tmp_path):
    store = ChatStore(tmp_path)
    original = store.save(_conv())
    imported = store.import_json(to_json(original))
    assert imported["id"] != original["id"] and len(store.list()) == 2
    assert imported["messages"] == original["messages"]


def test_import_openai_style_messages(tmp_path):
    data = {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"},
                         {"role": "assistant", "content": "A"}]}
    conv = ChatStore(tmp_path).import_json(json.dumps(data))
    assert conv["system"] == "S" and [m["role"] for m in conv["messages"]] == ["user", "assistant"]
    assert conv["title"] == "Q"


@pytest.mark.parametrize("text, words", [
    ("{oops", "not valid JSON"),
    ("[1, 2]", "JSON object"),
    ('{"title": "x"}', "no 'messages'"),
    ('{"messages": [{"role": "robot", "content": "x"}]}', "message 1"),
    ('{"messages": [{"role": "user", "content": 3}]}', "message 1"),
])
def test_import_rejects_bad_files_clearly(tmp_path, text, words):
    with pytest.raises(ChatFormatError, match=words):
        ChatStore(tmp_path).import_json(text)


def test_title_from():
    assert title_from("  hello\n world ") == "hello world"
    long = title_from("word " * 40)
    assert long.endswith("…") and len(long) <= 49
    assert title_from("") == "New chat"
