"""Fixtures every test module shares.

The chromium fixture is registered here once: imported into two test modules
it would become two session fixtures, and a second Playwright sync session
cannot start inside the first one's event loop.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fixtures_ui import browser, ui_models  # noqa: E402,F401
