"""One error base and one user_message: every surface words an error the same way."""
from __future__ import annotations

import pytest
import torch
from fixtures_models import STORIES

from lmstudio_lite import cli
from lmstudio_lite.checkpoints.chat_template import ChatTemplateError
from lmstudio_lite.atomic import DiskFullError
from lmstudio_lite.checkpoints.errors import CheckpointError
from lmstudio_lite.chats import ChatFormatError
from lmstudio_lite.errors import LiteError, is_user_error, user_message
from lmstudio_lite.generation import ContextOverflowError
from lmstudio_lite.paths import HomeError, app_paths
from lmstudio_lite.services.access import AccessError
from lmstudio_lite.services.download import DownloadCancelled, DownloadError
from lmstudio_lite.training.jobs import JobBusyError
from lmstudio_lite.training.readers import DataError
from lmstudio_lite.training.run import run_training
from lmstudio_lite.training.spec import TrainSpec
from lmstudio_lite.training.trainer import Hooks, TrainingError

USER_ERRORS = [CheckpointError("/m/config.json", "not valid JSON"), DiskFullError("no space left: 3 MB needed"),
               ContextOverflowError(300, 256), HomeError("cannot create /home/x"), AccessError("path refused"),
               DownloadError("offline"), DownloadCancelled("cancelled"), DataError("d.jsonl", "bad row", 7),
               TrainingError("diverged"), JobBusyError("r1", "running"), ChatTemplateError("no template"),
               ChatFormatError("not a conversation")]


@pytest.mark.parametrize("error", USER_ERRORS, ids=lambda e: type(e).__name__)
def test_user_facing_errors_share_one_base_and_show_their_own_text(error):
    assert isinstance(error, LiteError) and is_user_error(error)
    assert user_message(error) == str(error) and "Traceback" not in user_message(error)


def test_os_errors_name_the_file_and_the_reason_not_the_errno():
    assert user_message(FileNotFoundError(2, "No such file or directory", "/data/x.txt")) == \
        "/data/x.txt: No such file or directory"
    assert user_message(KeyError("no local model named 'x'")) == "no local model named 'x'"  # unquoted


def test_out_of_memory_is_worded_whatever_raised_it():
    for e in (MemoryError(), torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"),
              RuntimeError("MPS backend out of memory (MPS allocated: 1 GB)")):
        assert is_user_error(e) and "ran out of memory" in user_message(e)


def test_a_bug_is_named_as_one():
    e = ZeroDivisionError("division by zero")
    assert not is_user_error(e)
    assert user_message(e) == "Something went wrong (ZeroDivisionError: division by zero)."


def _command_raising(monkeypatch, error):
    def cmd(args):
        raise error
    add, _, text = cli.COMMANDS["models"]
    monkeypatch.setitem(cli.COMMANDS, "models", (add, cmd, text))


def test_cli_prints_the_user_message_and_lets_a_bug_raise(monkeypatch, capsys):
    _command_raising(monkeypatch, PermissionError(13, "Permission denied", "/models/x"))
    assert cli.main(["models"]) == 2
    assert capsys.readouterr().err == "error: /models/x: Permission denied\n"
    _command_raising(monkeypatch, ZeroDivisionError("division by zero"))
    with pytest.raises(ZeroDivisionError):  # its traceback is what a bug report needs
        cli.main(["models"])


def test_training_out_of_memory_names_the_knobs(tmp_path):
    data = tmp_path / "d.txt"
    data.write_text("once upon a time there was a cat. " * 40)

    def out_of_memory(line):
        raise MemoryError()

    spec = TrainSpec(data=str(data), base_model=str(STORIES), steps=2, batch_size=2, seq_len=32, threads=1)
    with pytest.raises(TrainingError) as info:
        run_training(spec, run_id="oom", hooks=Hooks(on_log=out_of_memory),
                     paths=app_paths(tmp_path / "home"))
    assert "lower the batch size" in user_message(info.value)
    assert "MemoryError" in (tmp_path / "home" / "runs" / "oom" / "log.txt").read_text()  # the traceback
