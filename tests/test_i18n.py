"""The UI's strings: both languages hold the same keys with the same {fields}, every key the code
uses exists, every message of the Train tab (its services, data checks and log lines) reads as
Chinese in zh-CN, the page's language is read from the request, and README.zh-CN.md keeps README's
set-up commands byte for byte."""
from __future__ import annotations

import ast
import re
import string
import unicodedata
from pathlib import Path
from types import SimpleNamespace

import pytest

from lmstudio_lite.services.tasks.translate import LANGUAGES
from lmstudio_lite.ui import i18n

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "lmstudio_lite"
UI = PKG / "ui"


def fields(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}


def test_both_languages_hold_the_same_keys_with_the_same_fields():
    en, zh = i18n.strings("en"), i18n.strings("zh-CN")
    assert set(en) - set(zh) == set(), "keys missing in zh-CN.json"
    assert set(zh) - set(en) == set(), "keys missing in en.json"
    for key in en:
        assert en[key].strip() and zh[key].strip(), key
        assert fields(en[key]) == fields(zh[key]), f"{key}: the languages fill different {{fields}}"
    assert set(i18n.LANGS) == {p.stem for p in i18n.LOCALES.glob("*.json")}
    # CommonMark does not close ** after punctuation when a letter follows: "**状态：**空闲" shows its
    # asterisks; "**状态**：空闲" is bold.
    assert [k for lang in (en, zh) for k in lang if unclosed_bold(lang[k])] == []


def unclosed_bold(text: str) -> bool:
    """A closing ** (the 2nd, 4th, ...) after punctuation and before a letter: not a closer in CommonMark."""
    def punct(ch: str) -> bool:
        return unicodedata.category(ch)[0] in "PS"  # CommonMark counts symbols as punctuation

    closers = [m.start() for m in re.finditer(r"\*\*", text)][1::2]
    return any(i > 0 and punct(text[i - 1]) and i + 2 < len(text) and not (text[i + 2].isspace() or punct(text[i + 2]))
               for i in closers)


def used_keys(files=None) -> tuple[set[str], set[str], set[str]]:
    """(keys, f-string prefixes, keys given to t()) that the package's modules (or ``files``) pass to t(),
    tr() and Message(), or hold in a ``*_KEYS`` table, read from the source."""
    keys, prefixes, marked = set(), set(), set()

    def literal(node, into_t: bool):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            keys.add(node.value)
            if into_t:
                marked.add(node.value)
        elif isinstance(node, ast.IfExp):
            literal(node.body, into_t)
            literal(node.orelse, into_t)
        elif isinstance(node, ast.JoinedStr) and isinstance(node.values[0], ast.Constant):
            prefixes.add(node.values[0].value)

    for path in files or PKG.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("t", "tr",
                                                                                                  "Message"):
                args = node.args if node.func.id != "tr" else node.args[1:]
                if args:
                    literal(args[0], node.func.id == "t")
            # tables of keys (STYLE_KEYS, QUANT_KEYS): their values are keys too (the page's own go to t())
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict) and any(
                    isinstance(x, ast.Name) and x.id.endswith("_KEYS") for x in node.targets):
                for v in node.value.values:
                    literal(v, path.parent == UI)
    return keys, prefixes, marked


def test_every_key_the_code_uses_exists():
    en = i18n.strings("en")
    keys, prefixes, marked = used_keys()
    assert len(keys) > 60, "the source scan found too few keys: has the convention changed?"
    assert sorted(keys - set(en)) == []
    assert prefixes == {"lang."}, prefixes  # the only computed keys; each language name must be there
    assert all(f"lang.{name}" in en for name in LANGUAGES)
    # The browser cannot fill {fields}: a t() string must not have any.
    assert [k for k in marked if fields(en[k])] == []


# The Train tab's path: what these modules word reaches the page (messages, data checks, log lines).
TRAIN_PATH = [PKG / "services" / "train_actions.py", PKG / "services" / "exports.py", PKG / "device.py",
              *sorted((PKG / "training").glob("*.py")), *sorted(UI.glob("train_*.py"))]
# Three or more English words in a row, once code spans, quoted names and {fields} are taken out.
ENGLISH_RUN = re.compile(r"[A-Za-z][a-z]+(?:[\s,;]+[A-Za-z][a-z]+){2,}")


def english_left(text: str) -> list[str]:
    text = re.sub(r"`[^`]*`|'[^']*'|\{[^}]*\}|\*\*", " ", text)
    return ENGLISH_RUN.findall(text)


def not_chinese(keys: set[str], same: set[str]) -> dict[str, str]:
    """key -> its zh-CN text, for each key whose zh-CN text keeps an English sentence, or is the
    English text copied over (except the ``same`` keys: names, or nothing but {fields})."""
    en, zh = i18n.strings("en"), i18n.strings("zh-CN")
    untranslated = {}
    for key in sorted(keys):
        said = i18n.tr("zh-CN", key, **{name: "7" for name in fields(en[key])})
        if english_left(said) or (zh[key] == en[key]) != (key in same):
            untranslated[key] = said
    return untranslated


def test_every_train_message_reads_as_chinese():
    """Each key the Train tab's services, data checks, runner and view can produce, said in zh-CN,
    is Chinese: no English sentence left (a key copied over untranslated fails here)."""
    keys, _, _ = used_keys(TRAIN_PATH)
    assert len(keys) > 150, "the Train path's keys were not found: has the convention changed?"
    assert not_chinese(keys, same={"train.lora", "train.warn", "log.timed", "log.float32"}) == {}


# Worded below ui/ and shown in the page: a model that does not load (the Models tab, the starter), a
# path the access policy refuses (inside the Train tab's or the Models tab's sentence).
CHECKPOINT_PATH = [*sorted((PKG / "checkpoints").glob("*.py")), PKG / "services" / "access.py"]


def test_every_checkpoint_access_and_registry_message_reads_as_chinese():
    keys, _, _ = used_keys([*CHECKPOINT_PATH, PKG / "services" / "registry.py"])
    assert len(keys) > 50, "the checkpoint errors' keys were not found: has the convention changed?"
    assert not_chinese(keys, same=set()) == {}


def prose(node) -> str:
    """The literal text of a string or f-string node ('' for anything else)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value for v in node.values if isinstance(v, ast.Constant))
    return ""


# Where a message for a person is made on the Train path: raised, returned, logged or listed as a
# note or warning (``notes``/``out`` lists; a model card's notes are a file, in English like log.txt).
SAID_BY = {"UserError", "DataError", "ExportResult", "warned", "say", "_log", "_on_log"}
LISTS = {"notes", "out"}


def test_the_train_path_words_its_messages_through_the_locale_files():
    """No English sentence is raised, returned, logged or listed as a warning on the Train path as a
    plain string: each is a Message, so the page can say it in Chinese (English stays in en.json)."""
    plain = []
    for path in TRAIN_PATH:
        if path.parent == UI or path.name == "cli.py":  # the page words with tr(); the CLI stays English
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                f = node.func
                name = f.id if isinstance(f, ast.Name) else getattr(f, "attr", "")
                listed = name == "append" and isinstance(f.value, ast.Name) and f.value.id in LISTS
                texts = [prose(a) for a in node.args] if name in SAID_BY or listed else []
            elif isinstance(node, ast.Return) and path.parent.name == "services":
                texts = [prose(node.value)]
            else:
                continue
            plain += [f"{path.name}:{node.lineno}: {t!r}" for t in texts if ENGLISH_RUN.search(t)]
    assert plain == []


def test_checkpoint_and_access_errors_are_worded_through_the_locale_files():
    """No CheckpointError, AccessError, ChatTemplateError or config.json check (hf_config's ValueErrors,
    which become a CheckpointError's problem) is raised with an English sentence as a plain string."""
    plain = []
    for path in CHECKPOINT_PATH:
        said_by = {"CheckpointError", "AccessError", "ChatTemplateError"} | (
            {"ValueError"} if path.name == "hf_config.py" else set())
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) in said_by:
                plain += [f"{path.name}:{node.lineno}: {prose(a)!r}" for a in node.args if ENGLISH_RUN.search(prose(a))]
    assert plain == []


# Worded below ui/ outside the Train path and shown in the page through friendly(e, lang): the tasks'
# refusals (Summarize, Translate, Inspect, Chat), generation's (a prompt too long, sampling settings),
# the saved conversations' (import, load, rename), the Download box's and the starter model's (errors
# and the job's progress lines), the model folders', the loaded model's (`services/api.py`).
PAGE_PATH = [*sorted((PKG / "services" / "tasks").glob("*.py")), *sorted((PKG / "generation").glob("*.py")),
             PKG / "chats.py",
             *(PKG / "services" / f"{name}.py" for name in ("download", "starter", "libraries", "api"))]


def test_every_message_these_modules_word_reads_as_chinese():
    keys, _, _ = used_keys(PAGE_PATH)
    assert len(keys) > 60, "these modules' keys were not found: has the convention changed?"
    assert not_chinese(keys, same=set()) == {}


def test_these_modules_word_no_error_or_progress_line_as_plain_english():
    """Every error these modules raise or return (``...Error(...)``, ``...Cancelled(...)``), every line
    of a download's status (``_set(message=...)``, ``note(...)``) and a task's progress (``Step(...)``)
    carries its English sentence as a Message."""
    plain = []
    for path in PAGE_PATH:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
                node = node.exc
            elif not isinstance(node, ast.Call):
                continue
            f = node.func
            name = f.id if isinstance(f, ast.Name) else getattr(f, "attr", "")
            if re.search(r"(Error|Cancelled)$", name) or name in {"note", "_set", "Step"}:
                texts = [prose(a) for a in [*node.args, *(k.value for k in node.keywords)]]
                plain += [f"{path.name}:{node.lineno}: {t!r}" for t in texts if ENGLISH_RUN.search(t)]
    assert plain == []


def test_a_task_refusal_and_a_bad_setting_are_said_in_the_pages_language(tmp_path):
    """The page says them in Chinese (naming the cap, the value); the CLI and the API keep the English."""
    from lmstudio_lite.chats import ChatStore
    from lmstudio_lite.generation import SamplingParams
    from lmstudio_lite.services.tasks.inspect import MAX_CHARS_PER_TOKEN, InspectError, encode
    from lmstudio_lite.services.tasks.translate import language_name
    from lmstudio_lite.ui.common import friendly

    model = SimpleNamespace(context_length=64, tokenizer=None)
    with pytest.raises(InspectError) as too_long:
        encode(model, "x" * (64 * MAX_CHARS_PER_TOKEN + 1))
    assert str(too_long.value).startswith("Inspect shows at most 64 tokens (the cap); this text is 2,049 characters.")
    assert friendly(too_long.value, "zh-CN") == ("检查最多显示 64 个词元（上限）；这段文本有 2,049 个字符。"
                                                 "请缩短后再检查。")
    with pytest.raises(ValueError) as bad_top_p:
        SamplingParams(top_p=1.5)
    assert str(bad_top_p.value) == "top_p must be in (0, 1] (1 turns it off), got 1.5"
    assert friendly(bad_top_p.value, "zh-CN") == "top_p 必须在 (0, 1] 之间（1 表示关闭），收到的是 1.5"
    with pytest.raises(ValueError) as not_json:
        ChatStore(tmp_path).import_json("{oops")
    assert "不是有效的 JSON（第 1 行：" in friendly(not_json.value, "zh-CN")
    assert friendly(not_json.value).startswith("not valid JSON (")
    step = i18n.Message("trans.step_part", i=1, n=3, src=language_name("German"), tgt=language_name("Klingon"))
    assert (step, i18n.say("zh-CN", step)) == ("Translating part 1 of 3 (German → Klingon)",
                                                "正在翻译第 1 部分，共 3 部分（德语 → Klingon）")


def test_a_failed_download_is_said_in_the_pages_language(tmp_path):
    from lmstudio_lite.services.download import Downloads, check_disk
    from lmstudio_lite.ui.models_download import progress_md

    jobs = Downloads(tmp_path)
    jobs.run("owner/name", "x.gguf", lambda progress, cancel: check_disk(tmp_path, 1 << 62))  # no disk is that big
    version, status = jobs.wait(0.0)
    while status["state"] == "running":
        version, status = jobs.wait(5.0, version)
    assert status["message"].startswith(f"Not enough disk space in {tmp_path}: the download needs")
    zh = progress_md(status, "zh-CN")
    assert f"{tmp_path} 的磁盘空间不足：下载需要" in zh
    assert english_left(zh.replace(str(tmp_path), "")) == []


def test_a_bad_model_and_a_refused_path_are_said_in_the_pages_language(tmp_path):
    """The Models tab says a checkpoint's problem in Chinese in a zh-CN page; str(e), the CLI's and
    the API's text, stays the English it was."""
    import json

    from fixtures_models import make_services

    from lmstudio_lite.checkpoints.hf_config import read_config
    from lmstudio_lite.services.access import AccessError, AccessPolicy
    from lmstudio_lite.ui.common import friendly
    from lmstudio_lite.ui.models_tab import load_model

    services = make_services(tmp_path / "home")
    bert, listed = tmp_path / "bert", tmp_path / "listed"
    bert.mkdir(), listed.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (listed / "config.json").write_text("[]")
    zh = load_model(services, str(bert), lang="zh-CN")
    assert "不支持 model_type 'bert'（支持：gpt2, llama" in zh and "加载" in zh, zh
    assert not english_left(zh), zh
    en = load_model(services, str(bert), lang="en")
    assert "model_type 'bert' is not supported (supported: gpt2, llama" in en, en
    assert "config.json：应当是一个 JSON 对象" in load_model(services, str(listed), lang="zh-CN")
    with pytest.raises(KeyError) as unlisted:  # the registry's refusal (export, delete)
        services.registry.find("gone")
    assert friendly(unlisted.value, "zh-CN") == "本地没有名为 'gone' 的模型；可用的有：无"
    with pytest.raises(Exception) as missing:
        read_config(tmp_path / "gone")
    assert str(missing.value) == f"{tmp_path / 'gone'}: model folder does not exist"
    assert friendly(missing.value, "zh-CN") == f"{tmp_path / 'gone'}：模型文件夹不存在"

    policy = AccessPolicy(remote=True, roots=(tmp_path / "home",))
    with pytest.raises(AccessError) as refused:
        policy.check_path("/etc/passwd", "data file")
    assert str(refused.value).startswith("this app is reachable from other machines, so a data file must lie")
    said = friendly(refused.value, "zh-CN")
    assert said.startswith("本应用可从其他机器访问，所以数据文件必须") and "'/etc/passwd'" in said, said
    assert not english_left(said), said


def test_t_refuses_an_unknown_key_and_tr_fills_fields_and_falls_back():
    with pytest.raises(KeyError, match="no.such"):
        i18n.t("no.such")
    assert str(i18n.t("tab.chat")).startswith("__i18n__")
    assert i18n.tr("zh-CN", "models.unloaded", name="m") == "已卸载 m。"
    assert i18n.tr("en", "models.unloaded", name="m") == "Unloaded m."
    assert i18n.tr("fr", "models.unloaded", name="m") == "Unloaded m."  # not offered: English
    assert i18n.tr(None, "models.unloaded", name="m") == "Unloaded m."


def request(cookie: str | None = None, accept: str | None = None):
    return SimpleNamespace(cookies={i18n.COOKIE: cookie} if cookie else {},
                           headers={"accept-language": accept} if accept else {})


@pytest.mark.parametrize("cookie, accept, lang", [
    (None, "zh-CN,zh;q=0.9,en;q=0.8", "zh-CN"),
    (None, "en-US,en;q=0.9,zh-CN;q=0.8", "en"),
    (None, "fr-FR,fr;q=0.9,zh;q=0.8", "zh-CN"),  # the best language we have
    (None, "en;q=0.2, zh-Hans-CN;q=0.9", "zh-CN"),  # by q, not by order
    (None, "zh-TW,zh-HK;q=0.9", "en"),  # Traditional: Gradio shows English too
    (None, "de, ;q=x, *", "en"),
    (None, None, "en"),
    ("en", "zh-CN", "en"),  # the switch wins over the browser
    ("zh-CN", "en-US", "zh-CN"),
    ("klingon", "zh-CN", "zh-CN"),  # a cookie we did not write is ignored
])
def test_the_request_says_the_pages_language(cookie, accept, lang):
    assert i18n.lang_of(request(cookie, accept)) == lang


def test_a_summarize_notice_comes_in_the_pages_language(tmp_path, quiet_toasts):
    from fixtures_models import make_services

    from lmstudio_lite.ui.summarize_tab import SummarizeHandlers

    h = SummarizeHandlers(make_services(tmp_path))
    *_, (_, _, zh) = h.run("", "Short paragraph", 8, 0.0, request=request(accept="zh-CN"))
    assert "请先粘贴文本" in zh
    *_, (_, _, none) = h.run("Some text.", "Short paragraph", 8, 0.0, request=request(cookie="zh-CN"))
    assert "没有加载模型" in none
    *_, (_, _, en) = h.run("", "Short paragraph", 8, 0.0)
    assert "Paste some text" in en


def test_the_inspect_tab_names_its_cap_in_the_pages_language(tmp_path, quiet_toasts):
    from fixtures_models import make_services

    from lmstudio_lite.services.tasks.inspect import MAX_CHARS_PER_TOKEN, token_cap
    from lmstudio_lite.ui.inspect_tab import InspectHandlers

    svc = make_services(tmp_path, load=str(REPO / "models" / "lmstudio-lite-tiny"))
    cap = token_cap(svc.registry.current)
    text = "a" * (cap * MAX_CHARS_PER_TOKEN + 1)
    zh = InspectHandlers(svc).run(text, request(accept="zh-CN"))[1]
    assert zh == f"⚠ 检查最多显示 {cap} 个词元（上限）；这段文本有 {len(text):,} 个字符。请缩短后再检查。"
    en = InspectHandlers(svc).run(text)[1]
    assert en.startswith(f"⚠ Inspect shows at most {cap} tokens (the cap)")


def test_translate_notices_name_languages_in_the_pages_language(tmp_path, quiet_toasts):
    from fixtures_models import make_services

    from lmstudio_lite.services.tasks.translate import AUTO
    from lmstudio_lite.ui.translate_tab import TranslateHandlers, detected

    german = "Der Hund ist nicht groß und die Katze auch nicht."
    assert detected(german, AUTO, request(accept="zh-CN")) == "检测到的源语言：**德语**"
    assert detected(german, AUTO) == "Detected source language: **German**"
    h = TranslateHandlers(make_services(tmp_path))
    *_, (_, same) = h.run("The cat is small.", "English", "English", 8, 0.0, request=request(cookie="zh-CN"))
    assert "文本已经是英语" in same
    src, tgt = h.language_lists(request(accept="zh-CN"))
    assert ("法语", "French") in tgt["choices"] and src["choices"][0] == ("自动检测", AUTO)


def commands(readme: Path) -> list[str]:
    """The bash blocks of the set-up section (up to the next '## ')."""
    text = readme.read_text(encoding="utf-8")
    setup = re.split(r"\n## ", text.split("\n## ", 1)[1])[0]
    return re.findall(r"```bash\n(.*?)```", setup, re.S)


def test_the_chinese_readme_has_the_same_two_setup_commands():
    en, zh = commands(REPO / "README.md"), commands(REPO / "README.zh-CN.md")
    assert len(en) == 2 and zh == en


def test_the_status_line_is_said_in_the_pages_language(tmp_path):
    """The registry words device, model, KV and memory as Messages: English for the CLI and API,
    Chinese in a zh-CN page."""
    from fixtures_models import make_services

    from lmstudio_lite.ui.status import status_text

    repo = Path(__file__).resolve().parents[1]
    svc = make_services(tmp_path, load=str(repo / "models" / "lmstudio-lite-tiny"))
    en, zh = status_text(svc, "en"), status_text(svc, "zh-CN")
    assert en.startswith("Device: CPU (") and "MB of weights" in en and " running, " in en, en
    assert zh.startswith("设备：CPU（") and "权重占" in zh and "KV 缓存：0/" in zh and "内存：" in zh, zh
    assert not re.search(r"running|waiting|weights|Memory|Model|Device", zh), zh
    assert str(svc.registry.status_line()) == en  # the Message reads English wherever it is not said
