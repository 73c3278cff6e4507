"""Where the shared, openly licensed data sets live: ``../shared/data`` beside the checkout."""
from __future__ import annotations

import os
from pathlib import Path

_candidates = [Path(os.environ["LMSTUDIO_LITE_SHARED"])] if os.environ.get("LMSTUDIO_LITE_SHARED") else []
_candidates += [Path(__file__).resolve().parents[2] / "shared" / "data", Path("/work/shared/data")]
SHARED_DATA = next((p for p in _candidates if (p / "models" / "stories260K").is_dir()), _candidates[0])
MODELS = SHARED_DATA / "models"
STORIES = MODELS / "stories260K"
