"""Train and Models tabs: pure view helpers, the tab actions with fakes and real services, and the
public API endpoints (/train_start, /train_status, /train_cancel, /models_list, /model_load) of the
real app in a subprocess, driven with gradio_client."""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest
from fixtures_models import STORIES, make_services
from fixtures_ui import start_app

from lmstudio_lite.services import models
from lmstudio_lite.services import train_actions as act
from lmstudio_lite.services.train_actions import UserError
from lmstudio_lite.ui import train_view as view


def write_jsonl(path: Path, rows: int = 40) -> Path:
    path.write_text("".join(json.dumps({"prompt": f"Tell me a story {i}",
                                        "completion": f"Once upon a time there was a cat named {i}."}) + "\n"
                            for i in range(rows)))
    return path


# ---- train_view: pure helpers ---------------------------------------------------------------------
def test_formatters():
    assert view.fmt_duration(65) == "1:05" and view.fmt_duration(3725) == "1:02:05"
    assert view.fmt_duration(None) == "?" and view.fmt_duration(float("nan")) == "?"
    assert view.human_bytes(1536) == "1.5 KB" and view.human_bytes(0) == "0 B"
    assert view.human_count(260_032) == "260K" and view.human_count(124_000_000) == "124M"
    assert view.human_count(0) == "?"


def test_loss_frame_is_long_form_and_thinned():
    frame = view.loss_frame([(1, 3.0, None), (2, 2.5, 2.7), (3, 2.0, None)])
    assert list(frame.columns) == ["step", "loss", "series"]
    assert frame[frame.series == "train"].step.tolist() == [1, 2, 3]
    assert frame[frame.series == "validation"].loss.tolist() == [2.7]
    long = view.loss_frame([(i, 1.0 / (i + 1), None) for i in range(2000)])
    assert len(long) <= view.MAX_PLOT_POINTS + 1 and long.step.iloc[-1] == 1999  # newest point kept
    assert len(view.loss_frame([])) == 0


def test_plot_value_never_sends_an_empty_frame_and_names_both_series():
    assert view.plot_value([]) is None and view.plot_value(None) is None
    frame = view.plot_value([(1, 3.0, None), (2, 2.0, None)])
    assert set(frame.series) == {"train", "validation"}  # a NaN placeholder for validation
    assert frame[frame.series == "validation"].loss.isna().all()


def test_status_markdown_and_progress():
    assert "idle" in view.status_markdown({"state": "idle"})
    running = {"state": "running", "run_id": "r1", "step": 5, "total_steps": 20, "epoch": 0.5, "loss": 2.0,
               "val_loss": None, "lr": 1e-3, "eta_s": 75, "elapsed_s": 10, "tokens_per_s": 1234.5}
    md = view.status_markdown(running)
    assert "running" in md and "step 5/20" in md and "r1" in md and "val loss –" in md
    bar = view.progress_html(running)
    assert 'data-percent="25.0"' in bar and "ETA 1:15" in bar and "1,234 tokens/s" in bar
    failed = dict(running, state="failed", error="data.jsonl line 7: missing field 'completion'")
    assert "line 7" in view.status_markdown(failed)
    done = dict(running, state="finished", step=20, model_path="/m/new")
    assert "/m/new" in view.status_markdown(done) and view.percent(done) == 100.0
    assert "ETA" not in view.progress_html(done)
    assert "&lt;b&gt;" in view.progress_html({"state": "<b>"})  # escaped
    assert ">0%</div>" in view.progress_html(None)  # idle: no words to translate
    warned = dict(running, warning="validation loss rose 3 evaluations in a row (0.540 → 3.210)")
    assert "Overfitting? validation loss rose 3" in view.status_markdown(warned).replace("**", "")
    assert "Resume" in view.status_markdown(dict(running, state="cancelled"))


def test_past_runs_show_settings_and_outcome_and_fill_the_form():
    spec = {"base_model": "/m/stories260K", "data": "/d/stories.jsonl", "steps": 0, "epochs": 2.0, "lr": 1e-3,
            "batch_size": 4, "seq_len": 64, "lora_rank": 8, "warmup_steps": -1, "scheduler": "linear",
            "grad_accum": 2, "eval_every": 25, "seed": 7, "keep_best": True, "early_stop_patience": 3,
            "out_name": None}
    run = {"run_id": "r9", "spec": spec, "outcome": "cancelled", "step": 37, "total_steps": 500, "loss": 1.2,
           "val_loss": 1.5, "best": {"step": 25, "val_loss": 1.4}, "resumable": True, "model_path": None}
    assert view.run_label(run) == "r9 · stories260K (LoRA r8) on stories.jsonl · cancelled · step 37/500"
    md = view.run_markdown(run)
    assert "cancelled at step 37 of 500" in md and "Best validation loss 1.4000 at step 25" in md
    assert "Resume" in md and "scheduler: linear" in md and "early stopping: after 3 evaluations" in md
    form = view.form_from_spec(spec, "stories260K")
    assert set(form) == set(view.FORM_KEYS)
    assert form["length_by"] == "epochs" and form["epochs"] == 2.0 and form["method"] == "LoRA"
    assert (form["base"], form["seed"], form["grad_accum"], form["out_name"]) == ("stories260K", 7, 2, "")


def test_signature_changes_only_with_news():
    s = {"state": "running", "run_id": "r", "step": 3, "history": [(1, 2.0, None)], "log": ["a"]}
    assert view.signature(s) == view.signature(dict(s))
    assert view.signature(s) != view.signature(dict(s, step=4))
    assert view.is_active(s) and not view.is_active({"state": "finished"})


def test_probes_log_and_json():
    md = view.probes_markdown([{"prompt": "Once", "output": "upon a *time*\nend"}])
    assert "**Once**" in md and "\\*time\\*" in md and "⏎" in md
    assert "a → b" in view.probes_markdown([("a", "b")]).replace("**", "")
    assert "appear here" in view.probes_markdown([])
    assert view.log_text({"log": ["one", "two", "three"]}, limit=2) == "three\ntwo"
    out = json.loads(view.status_json({"state": "running", "history": [(1, 2.0, None), (2, 1.5, 1.6)],
                                       "preview": {"format": "text", "examples": [1, 2]}, "log": ["x"]}))
    assert out["history_points"] == 2 and out["last_point"] == [2, 1.5, 1.6] and "history" not in out
    assert out["data_format"] == "text" and "preview" not in out


def test_preview_markdown_and_highlight():
    preview = {"format": "prompt_completion", "rows": 3, "tokens": 120, "loss_tokens": 40, "truncated_rows": 1,
               "histogram": [("1-32", 0), ("33-64", 3), (">64", 1)], "warnings": ["1 of 3 rows are cut"],
               "rendered": ["<s>### User:\nhi\n\n### Assistant:\n«hello</s>»\n"],
               "examples": [[("<s>", False), ("hi", False), ("hello", True), ("<0x0A>", False)]]}
    md = view.preview_markdown(preview)
    assert "prompt_completion" in md and "⚠️ 1 of 3 rows are cut" in md and "33-64" in md
    seg = view.preview_highlight(preview)
    assert ("hello</s>", "loss") in seg and seg[0] == ("<s>### User:\nhi\n\n### Assistant:\n", None)
    # French guillemets in the data itself: fall back to the token list
    odd = dict(preview, rendered=["«Bonjour» dit-il «salut</s>»"],
               examples=[[("«Bonjour»", False), ("<0x0A>", False), ("salut", True)]])
    assert view.preview_highlight(odd) == [("«Bonjour»\n", None), ("salut", "loss")]
    assert "cannot be used" in view.data_error_markdown("x line 2: bad")


def test_default_hparams_fit_model_and_device():
    tiny = act.default_hparams(260_000, 512, "cpu")
    assert tiny["method"] == "Full" and tiny["lora_rank"] == 0 and tiny["seq_len"] <= 512 and tiny["lr"] == 5e-4
    big = act.default_hparams(500_000_000, 32768, "cuda")
    assert big["method"] == "LoRA" and big["lora_rank"] > 0 and big["seq_len"] == 512
    assert act.default_hparams(1_000_000, 128, "cpu")["seq_len"] == 128  # never past the context


def test_model_rows_estimate_fit():
    @dataclass
    class E:
        name: str
        parameters: int
        path: str = "/m/x"
        source: str = "user"
        family: str = "llama"
        context_length: int = 512
        dtype: str = "float32"
        size_bytes: int = 1000
        error: str | None = None

    rows = view.model_rows([E("small", 1000), E("huge", 10**9, path="/m/y")], "/m/x", lambda e: e.parameters * 4,
                           2 * 10**9, "RAM")
    assert rows[0][0] == "small" and rows[0][8].startswith("yes") and rows[0][9] == "●"
    assert rows[1][8].startswith("no") and rows[1][9] == ""


# ---- train_actions with fake services ------------------------------------------------------------------
@dataclass
class FakeJobs:
    state: dict = field(default_factory=lambda: {"state": "idle"})
    started: list = field(default_factory=list)

    def start(self, spec):
        from lmstudio_lite.training.jobs import JobBusyError

        if self.state["state"] == "running":
            raise JobBusyError("r1", "running")
        self.started.append(spec)
        self.state = {"state": "running", "run_id": "r1"}
        return "r1"

    def cancel(self):
        self.state["state"] = "cancelling"

    def status(self):
        return dict(self.state)

    def list_runs(self):
        return [{"run_id": "r1", "outcome": "running", "step": 3, "total_steps": 10, "resumable": False,
                 "spec": {}}] if self.started else []


@pytest.fixture
def services(tmp_path):
    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    shutil.copytree(STORIES, home / "models" / "stories260K")
    svc = make_services(home)
    svc.jobs = FakeJobs()
    return svc


def test_resolve_data_rules(services, tmp_path, monkeypatch):
    data = write_jsonl(tmp_path / "d.jsonl")
    assert act.resolve_data(services, str(data)) == str(data)
    with pytest.raises(UserError, match="No data file"):
        act.resolve_data(services, str(tmp_path / "missing.jsonl"))
    (tmp_path / "x.exe").write_text("x")
    with pytest.raises(UserError, match="unsupported"):
        act.resolve_data(services, str(tmp_path / "x.exe"))
    samples = tmp_path / "assets"
    samples.mkdir()
    write_jsonl(samples / "sample.jsonl")
    monkeypatch.setattr(act, "assets_dir", lambda: samples)
    services.shared = services.access.remote = True
    assert act.resolve_data(services, "sample.jsonl") == str(samples / "sample.jsonl")
    with pytest.raises(UserError, match="reachable from other machines"):
        act.resolve_data(services, str(data))  # a typed path
    inside = str(services.paths.models.resolve() / "stories260K")  # a path inside the app's models folder
    assert act.find_model(services, inside).name == "stories260K"


def test_preview_and_spec(services, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl")
    p = act.preview_data(services, "stories260K", str(data), 64, 4)
    assert p["format"] == "prompt_completion" and p["rows"] == 40
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a"}\n')
    with pytest.raises(UserError, match="line 2"):
        act.preview_data(services, "stories260K", str(bad), 64, 1)
    with pytest.raises(UserError, match="context"):
        act.make_spec(services, "stories260K", str(data), seq_len=4096, steps=10)
    with pytest.raises(UserError, match="Invalid setting"):
        act.make_spec(services, "stories260K", str(data), seq_len=64, steps=10, lr=5.0)
    spec = act.make_spec(services, "stories260K", str(data), seq_len=64, steps=10, lr=1e-3, lora_rank=4, bogus=1)
    assert spec.base_model.endswith("stories260K") and spec.lora_rank == 4 and spec.seq_len == 64
    assert act.start_run(services, spec).startswith("Started run `r1`")
    with pytest.raises(UserError) as busy:
        act.start_run(services, spec)
    assert str(busy.value) == "Not started: run r1 is still running: cancel it or wait for it to finish."
    assert "Cancel requested" in act.cancel_run(services)
    assert act.use_in_chat(services).startswith("⚠ Run `r1` is still training (step 3 of 10)")


def test_train_handlers_answer_in_the_language_of_the_request(services, tmp_path):
    """A zh-CN request gets the Train tab's status, progress, preview and runs list in Chinese; no
    language (an API caller) gets the English they always had."""
    import gradio as gr

    from lmstudio_lite.ui import i18n, train_tab

    with gr.Blocks() as demo:
        train_tab.build(services)
    fn = {f.fn.__name__: f.fn for f in demo.fns.values() if f.fn.__module__.endswith("train_tab")}
    zh = SimpleNamespace(cookies={i18n.COOKIE: "zh-CN"}, headers={})
    data = str(write_jsonl(tmp_path / "d.jsonl"))
    preview_zh, preview_en = fn["preview"]("stories260K", data, 64, 4, zh), fn["preview"]("stories260K", data, 64, 4)
    assert "**格式**：prompt_completion · **行数**：40" in preview_zh[0] and "高亮" in preview_zh[0]
    assert preview_en[0].startswith("**Format:** prompt_completion · **rows:** 40")
    assert "此数据无法使用" in fn["preview"]("stories260K", str(tmp_path / "none.jsonl"), 64, 4, zh)[0]
    assert fn["preview"]("stories260K", None, 64, 4, zh)[0] == i18n.tr("zh-CN", "train.preview_hint")

    services.jobs.start(act.make_spec(services, "stories260K", data, seq_len=64, steps=10))
    services.jobs.state.update(step=3, total_steps=10, loss=2.5, elapsed_s=65)
    status, progress, *_ = out = fn["tick"](None, None, zh)
    assert status.startswith("**状态**：训练中 · 运行 `r1` · 第 3/10 步") and "损失 2.5000" in status
    assert "第 3/10 步" in progress and "已用时 1:05" in progress and "ETA" not in progress
    runs = next(o for o in out if isinstance(o, dict) and o.get("choices"))
    assert runs["choices"] == [("r1 · ?（全量）基于 ? · ● 训练中 · 第 3/10 步", "r1")]
    assert fn["tick"](None, None)[0].startswith("**Status:** running · run `r1` · step 3/10")


def test_train_actions_refuse_and_confirm_in_the_language_of_the_request(services, tmp_path):
    """Start, Cancel, Resume, Use in Chat and Export: the services' refusals and confirmations, said
    in Chinese for a zh-CN page, in English for an API caller."""
    import gradio as gr

    from lmstudio_lite.ui import i18n, train_tab

    with gr.Blocks() as demo:
        train_tab.build(services)
    fn = {f.fn.__name__: f.fn for f in demo.fns.values() if f.fn.__module__.endswith("train_tab")}
    zh = SimpleNamespace(cookies={i18n.COOKIE: "zh-CN"}, headers={})
    form = dict.fromkeys(train_tab.FORM, None)
    form.update(base="stories260K", length_by="steps", steps=10, seq_len=64, method="Full", batch_size=4, lr=1e-3)
    assert fn["start"](zh, *form.values()) == "⚠ 请选择训练数据：上传一个文件，或选一个示例。"
    assert fn["start"](None, *form.values()) == "⚠ Choose training data: upload a file or pick a sample."
    assert fn["cancel"](zh) == "当前没有正在进行的训练。"
    assert fn["use"](None, zh) == "⚠ 还没有训练运行：请先训练一个模型。"
    form["data"] = str(write_jsonl(tmp_path / "d.jsonl"))
    assert fn["start"](zh, *{**form, "lr": 0}.values()) == "⚠ 设置无效：学习率必须在 (0, 1] 之间，当前为 0.0"
    assert fn["start"](zh, *form.values()) == "已开始运行 `r1`：共 10 步。"
    assert fn["start"](zh, *form.values()) == "⚠ 未开始：运行 r1 仍处于“训练中”状态：请先取消它，或等它结束。"
    assert fn["use"]("r1", zh) == "⚠ 运行 `r1` 仍在训练（第 3/10 步）；训练完成后才会有模型。"
    assert fn["export"]("f32", "r1", zh)[0] == "⚠ 运行 `r1` 仍在训练（第 3/10 步）；训练完成后才会有模型。"
    assert fn["resume"]("nope", zh) == "⚠ 没有名为 `nope` 的训练运行。"
    assert fn["cancel"](zh) == "已请求取消：当前这一步结束后训练停止，并保留最后一个检查点。"


def test_train_tab_starts_on_the_model_loading_in_the_background(tmp_path):
    """The app builds the page before its start-up model has loaded: the Train tab's base model is
    still that one, not merely the first listed."""
    from lmstudio_lite.paths import app_paths
    from lmstudio_lite.services import build_services

    home = tmp_path / "home"
    for name in ("a-first", "zz-started-with"):
        shutil.copytree(STORIES, home / "models" / name)
    svc = build_services(model=str(home / "models" / "zz-started-with"), paths=app_paths(home), with_jobs=False,
                         with_chats=False, background=True)
    choices = act.model_choices(svc)
    assert svc.loading == "zz-started-with" and svc.registry.current is None
    assert choices[0] != "zz-started-with"
    assert act.initial_base(svc, choices) == "zz-started-with"


def test_finished_run_compare_and_use_in_chat(tmp_path):
    """A real 12-step run in the job thread; then Compare streams both answers and Use in Chat loads it."""
    from lmstudio_lite.training.jobs import JobRunner

    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    shutil.copytree(STORIES, home / "models" / "stories260K")
    svc = make_services(home, load="stories260K")
    svc.jobs = JobRunner(svc.paths)
    spec = act.make_spec(svc, "stories260K", str(write_jsonl(tmp_path / "d.jsonl")), seq_len=64, steps=12,
                         lr=1e-3, batch_size=4, eval_every=6, threads=1)
    act.start_run(svc, spec)
    status = svc.jobs.wait(120)
    assert status["state"] == "finished", status
    done = act.finished_model(svc)
    assert done["model_path"] == status["model_path"] and done["base_model"].endswith("stories260K")
    assert Path(done["model_path"]).name in act.model_choices(svc)  # the new model is listed
    form = act.run_form(svc, done["run_id"])  # what a reloaded page's form shows: the run's own settings
    assert (form["base"], form["steps"], form["batch_size"], form["seq_len"], form["eval_every"]) == \
        ("stories260K", 12, 4, 64, 6)
    answers = list(act.compare_stream(svc, "Tell me a story 3", as_chat=True, max_new_tokens=12))
    base, tuned = answers[-1]
    assert base and tuned and "[error" not in base + tuned
    assert svc.registry.current.name == "stories260K"  # comparing never replaces the serving model
    assert "Loaded" in act.use_in_chat(svc)
    assert Path(svc.registry.current.path) == Path(done["model_path"]).resolve()

    # D3: after Cancel, Use in Chat and Compare act on the cancelled run (say why they cannot), not on
    # the previous run's model; Resume finishes it with its own settings, and then they use its model.
    svc.registry.load(str(svc.paths.models / "stories260K"))
    cancelled = svc.jobs.start(act.make_spec(svc, "stories260K", spec.data, seq_len=64, steps=6, lr=1e-3,
                                             batch_size=4, eval_every=3, threads=1, out_name="resumed-model"))
    svc.jobs.cancel()
    assert svc.jobs.wait(120)["state"] == "cancelled"
    said = act.use_in_chat(svc)
    assert said.startswith(f"⚠ Run `{cancelled}` was cancelled at step 0 of 6, so it has no model.")
    assert svc.registry.current.name == "stories260K"  # nothing was loaded
    with pytest.raises(UserError, match=f"Run `{cancelled}` was cancelled"):
        next(act.compare_stream(svc, "Tell me a story 3", as_chat=True))
    assert act.finished_model(svc) is None
    runs = {r["run_id"]: r for r in act.list_runs(svc)}
    assert runs[cancelled]["outcome"] == "cancelled" and runs[cancelled]["resumable"]
    assert runs[done["run_id"]]["outcome"] == "finished"
    assert "Loaded" in act.use_in_chat(svc, done["run_id"])  # the earlier run, named explicitly
    assert act.resume_run(svc, cancelled) == f"Resumed run `{cancelled}` from step 0."
    assert svc.jobs.wait(120)["state"] == "finished"
    assert act.run_model(svc)["model_path"].endswith("resumed-model")
    with pytest.raises(UserError, match="already finished"):
        act.resume_run(svc, cancelled)


def test_models_tab_actions(tmp_path):
    from lmstudio_lite.ui import models_tab as mt

    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    shutil.copytree(STORIES, home / "models" / "stories260K")
    (home / "models" / "broken").mkdir()
    (home / "models" / "broken" / "config.json").write_text("{not json")
    svc = make_services(home, load="stories260K")
    frame = mt.models_frame(svc)
    row = frame[frame.name == "stories260K"].iloc[0]
    assert row["loaded"] == "●" and row["family"] == "llama" and row["fits"].startswith("yes")
    assert frame[frame.name == "broken"].iloc[0]["problem"]
    msg = mt.load_model(svc, "broken")
    assert "Could not load broken" in msg and "stories260K is still loaded" in msg
    assert svc.registry.current.name == "stories260K"
    src = shutil.copytree(STORIES, tmp_path / "src" / "story-copy")
    assert "Imported **story-copy**" in mt.import_folder(svc, str(src))
    assert "already exists" in mt.import_folder(svc, str(src))
    assert "Tick" in mt.delete_model(svc, "story-copy", False) and "story-copy" in models.names(svc)
    assert mt.delete_model(svc, "story-copy", True) == "Deleted story-copy."
    assert "story-copy" not in models.names(svc)
    assert "Unloaded stories260K" in mt.unload_model(svc) and svc.registry.current is None
    svc.shared = svc.access.remote = True
    assert "reachable from other machines" in mt.import_folder(svc, str(src))
    assert "No local model" in mt.load_model(svc, str(src))  # no typed paths when shared
    assert "Loaded **stories260K**" in mt.load_model(svc, "stories260K")


# ---- the real app, through gradio_client --------------------------------------------------------------
@pytest.fixture(scope="module")
def app(tmp_path_factory):
    home = tmp_path_factory.mktemp("train-api-home")
    models = home / "models"
    models.mkdir()
    shutil.copytree(STORIES, models / "stories260K")
    (models / "broken").mkdir()
    (models / "broken" / "config.json").write_text("{this is not json")
    truncated = shutil.copytree(STORIES, models / "truncated")
    (truncated / "model.safetensors").write_bytes((STORIES / "model.safetensors").read_bytes()[:5000])
    proc = start_app(models / "stories260K", home)
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def client(app):
    from gradio_client import Client

    return Client(app.base + "/", verbose=False)


def wait_status(client, states, timeout=120.0) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        s = json.loads(client.predict(api_name="/train_status"))
        if s["state"] in states:
            return s
        time.sleep(0.3)
    raise TimeoutError(f"train status never reached {states}: {s}")


def test_api_surface_is_small(client):
    named = set(client.view_api(return_format="dict", print_info=False)["named_endpoints"])
    assert {"/train_start", "/train_status", "/train_cancel", "/models_list", "/model_load"} <= named
    assert not {"/start", "/preview", "/_poll", "/compare", "/on_upload", "/lambda"} & named


def test_models_list_and_load(client):
    models = {m["name"]: m for m in client.predict(api_name="/models_list")}
    assert models["stories260K"]["loaded"] and models["stories260K"]["family"] == "llama"
    assert models["stories260K"]["parameters"] > 200_000 and models["stories260K"]["memory_bytes"] > 0
    assert models["broken"]["error"] and not models["broken"]["loaded"]
    msg = client.predict("truncated", api_name="/model_load")
    assert "Could not load truncated" in msg and "stories260K is still loaded" in msg and "Traceback" not in msg
    assert "broken" in client.predict("broken", api_name="/model_load")
    assert "No local model" in client.predict("nope", api_name="/model_load")
    models = {m["name"]: m for m in client.predict(api_name="/models_list")}
    assert models["stories260K"]["loaded"]  # the app still serves the old model
    assert "Loaded" in client.predict("stories260K", api_name="/model_load")


def test_train_start_status_cancel(client, app, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl")
    assert "No data file" in client.predict("stories260K", str(tmp_path / "none.jsonl"), api_name="/train_start")
    msg = client.predict("stories260K", str(data), 5000, 1e-3, 4, 64, 0, api_name="/train_start")
    assert msg.startswith("Started run"), msg
    s = wait_status(client, ("running",))
    while s["step"] < 2 and s["state"] == "running":
        time.sleep(0.2)
        s = json.loads(client.predict(api_name="/train_status"))
    assert s["total_steps"] == 5000 and s["data_format"] == "prompt_completion"
    busy = client.predict("stories260K", str(data), 10, api_name="/train_start")
    assert busy.startswith("error: Not started: run ") and busy.count("still running") == 1
    assert "Cancel requested" in client.predict(api_name="/train_cancel")
    s = wait_status(client, ("cancelled",), timeout=60)
    assert 0 < s["step"] < 5000
    assert "No training run" in client.predict(api_name="/train_cancel")


def test_train_bad_data_fails_readably_then_a_run_finishes(client, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "only"}\n')
    before = json.loads(client.predict(api_name="/train_status"))
    msg = client.predict("stories260K", str(bad), 10, 1e-3, 1, 64, 0, api_name="/train_start")
    assert msg.startswith("error: This data cannot be used") and "line 2" in msg and "Traceback" not in msg
    after = json.loads(client.predict(api_name="/train_status"))
    assert (after["run_id"], after["state"]) == (before["run_id"], before["state"])  # no run was started
    msg = client.predict("stories260K", str(write_jsonl(tmp_path / "d.jsonl")), 8, 1e-3, 4, 64, 2,
                         api_name="/train_start")
    assert msg.startswith("Started"), msg
    s = wait_status(client, ("finished", "failed"))
    assert s["state"] == "finished", s
    names = [m["name"] for m in client.predict(api_name="/models_list")]
    assert Path(s["model_path"]).name in names  # the LoRA-tuned model is now a local model
