"""C2PA: does a manifest embedded in the image say training or mining is `notAllowed`?"""
from __future__ import annotations

import io
import json
import re
from typing import Any

# Assertion labels (before any ".vN" version or "__N" instance suffix) and the
# entries in them that concern training and mining (not ai_inference).
_TRAINING_MINING_LABELS = ("c2pa.training-mining", "cawg.training-mining")
_TRAINING_MINING_USES = frozenset(
    f"{prefix}.{use}" for prefix in ("c2pa", "cawg") for use in ("ai_generative_training", "ai_training", "data_mining")
)
_LABEL_SUFFIX = re.compile(r"(\.v\d+)?(__\d+)?$")


def c2pa_store_disallows_training(store: dict[str, Any]) -> str | None:
    """The first training/mining entry marked `notAllowed` in any manifest of
    a C2PA manifest store (c2pa-python's Reader.json() layout), if any."""
    for manifest in (store.get("manifests") or {}).values():
        for assertion in manifest.get("assertions") or []:
            label = _LABEL_SUFFIX.sub("", str(assertion.get("label", "")))
            if label not in _TRAINING_MINING_LABELS:
                continue
            entries = (assertion.get("data") or {}).get("entries") or {}
            for use, entry in entries.items():
                allowed = str((entry or {}).get("use", "")).lower()
                if use in _TRAINING_MINING_USES and allowed == "notallowed":
                    return use
    return None


class C2paReader:
    """Reads C2PA manifests from image bytes with c2pa-python, offline.

    What is checked: every manifest in the store embedded in the image (JPEG
    APP11, PNG caBX, WebP, ... as c2pa-rs supports) for a training-mining
    assertion with a training/mining entry `"use": "notAllowed"`.  What is NOT
    checked: the claim signature, the certificate trust chain, timestamps and
    the hash binding to the pixels (verification is switched off: an opt-out is
    a request to honour whoever signed it, and skipping it saves time); remote
    manifests referenced from XMP (never fetched: no network at run time).
    """

    def __init__(self):
        import c2pa

        self._c2pa = c2pa
        settings = c2pa.Settings.from_dict(
            {"verify": {"verify_after_reading": False, "remote_manifest_fetch": False, "ocsp_fetch": False}}
        )
        self._context = c2pa.Context(settings)

    def training_disallowed(self, data: bytes, mime: str | None) -> str | None:
        # Every embedded C2PA store is a JUMBF box tree; skip the native
        # reader for the vast majority of images that have none.
        if not data or b"jumb" not in data:
            return None
        try:
            with self._c2pa.Reader(mime or "", io.BytesIO(data), context=self._context) as reader:
                store = json.loads(reader.json())
        except (self._c2pa.C2paError, ValueError):
            return None  # no manifest, or one too broken to read
        return c2pa_store_disallows_training(store)


def check_c2pa_available() -> None:
    try:
        import c2pa  # noqa: F401
    except ImportError:
        raise ImportError(
            "C2PA checks need the c2pa-python package (pip install c2pa-python); or set c2pa: false"
        ) from None
