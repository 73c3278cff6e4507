"""The Train and Models tabs' actions live in services (services/train_actions.py, services/models.py):
uploads are known by the folder the UI reports, and one access policy decides which typed paths a
shared app may read or load."""
from __future__ import annotations

from pathlib import Path

import pytest
from fixtures_models import make_services

from lmstudio_lite.services import train_actions as act


@pytest.fixture
def services(tmp_path):
    svc = make_services(tmp_path / "home")
    svc.upload_dir = str(tmp_path / "uploads")
    (tmp_path / "uploads").mkdir()
    return svc


def test_a_shared_app_reads_uploads_but_not_typed_paths(services, tmp_path):
    upload = tmp_path / "uploads" / "d.txt"
    upload.write_text("once upon a time\n" * 20)
    typed = tmp_path / "elsewhere.txt"
    typed.write_text("once upon a time\n" * 20)
    services.shared = services.access.remote = True
    assert act.resolve_data(services, str(upload)) == str(upload)
    with pytest.raises(act.UserError, match="reachable from other machines"):
        act.resolve_data(services, str(typed))


def test_uploads_alone_have_a_size_limit(services, tmp_path):
    services.max_upload_bytes = 1000
    big = "x" * 2000 + "\n"
    (tmp_path / "uploads" / "big.txt").write_text(big)
    (tmp_path / "local.txt").write_text(big)
    with pytest.raises(act.UserError, match="the limit is 1000 B"):
        act.resolve_data(services, str(tmp_path / "uploads" / "big.txt"))
    assert act.resolve_data(services, str(tmp_path / "local.txt")).endswith("local.txt")  # the user's own file


def test_models_service_loads_a_typed_folder_only_where_the_policy_allows(services):
    from fixtures_models import STORIES

    from lmstudio_lite.errors import user_message
    from lmstudio_lite.services import models
    from lmstudio_lite.services.access import AccessError

    with pytest.raises(models.UnknownModel) as info:
        models.load(services, "nope")
    assert user_message(info.value) == "No local model named 'nope'"
    services.shared = services.access.remote = True
    with pytest.raises(models.UnknownModel):
        models.load(services, str(STORIES))  # outside the app's folders
    with pytest.raises(AccessError, match="reachable from other machines"):
        models.import_folder(services, str(STORIES))
    services.shared = services.access.remote = False
    assert models.load(services, str(STORIES)).name == "stories260K"
    record = next(models.model_record(services, e) for e in models.all_models(services) if e.name == "stories260K")
    assert record["loaded"] and Path(record["folder"]).resolve() == STORIES.resolve() and record["memory_bytes"] > 0
