"""Shared fixtures for the model-stage tests: tiny open_clip models built once per session."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # for `import tiny_openclip`

import tiny_openclip  # noqa: E402


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> tiny_openclip.SavedModel:
    return tiny_openclip.save_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


@pytest.fixture(scope="session")
def tiny_coca(tmp_path_factory) -> tiny_openclip.SavedModel:
    return tiny_openclip.save_tiny_coca(tmp_path_factory.mktemp("tiny_coca"))
