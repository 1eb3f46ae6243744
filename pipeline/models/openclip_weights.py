"""Which pretrained weights a model stage loads, and the activation they need.

open_clip's architecture configs do not say which activation a checkpoint was
trained with.  OpenAI's CLIP weights (and some others: YFCC, CC12M, MetaCLIP)
use QuickGELU, and open_clip records that on the pretrained *tag*
(`quick_gelu=True` in `open_clip.pretrained`), not on the architecture:
`ViT-B-32` is GELU, its `openai` tag is QuickGELU, and `ViT-B-32-quickgelu`
is the same architecture with QuickGELU.  `ViT-B-32` + `openai` loaded as
named gives a model whose every score differs from OpenAI's and LAION's;
open_clip only warns for a tag, and says nothing for a checkpoint file.

`resolve_weights` decides it the way open_clip's pretrained table does:

* a tag: that tag's `quick_gelu` (so `ViT-B-32` + `openai` runs as
  `ViT-B-32-quickgelu`, with a warning that says so);
* a checkpoint file with `pretrained_tag` (the tag the file holds): that tag's
  activation and its preprocessing (mean, std, interpolation, resize mode), as
  if the tag had been downloaded;
* a TorchScript archive without `pretrained_tag`: OpenAI's release format (the
  `ViT-B-32.pt` files from openaipublic), so the `openai` tag where the
  architecture has one;
* a checkpoint file of an architecture whose tags disagree on the activation
  (`ViT-B-32`: `openai` QuickGELU, `laion2b_s34b_b79k` GELU) and nothing to
  tell which: refused, asking for `pretrained_tag` or a `-quickgelu` name;
* a QuickGELU architecture (`*-quickgelu`) with a GELU tag: refused.
"""
from __future__ import annotations

import logging
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OPENAI_TAG = "openai"
# Keys of a pretrained tag's (or a hub config's) preprocessing -> create_model_and_transforms arguments.
PREPROCESS_ARGUMENTS = {
    "mean": "image_mean",
    "std": "image_std",
    "interpolation": "image_interpolation",
    "resize_mode": "image_resize_mode",
}

log = logging.getLogger(__name__)


class ModelLoadError(ValueError):
    """A model, its weights or its config cannot be used; the message says why and what to do."""


@dataclass(frozen=True)
class ResolvedWeights:
    tag: str | None  # the pretrained tag the weights are; None when nothing says
    quick_gelu: bool  # the activation the model is built with
    force_quick_gelu: bool  # the architecture says GELU but the weights need QuickGELU
    torchscript: bool  # a TorchScript archive (torch.load refuses it with weights_only=True)
    preprocess: dict[str, Any] = field(default_factory=dict)  # the tag's preprocessing, for a checkpoint file

    def note(self, model: str) -> str:
        activation = "QuickGELU" if self.quick_gelu else "GELU"
        weights = f"{self.tag!r} weights" if self.tag else "weights"
        forced = f", i.e. {model}-quickgelu" if self.force_quick_gelu else ""
        return f"; {weights} with {activation}{forced}"


def resolve_weights(model: str, pretrained: str, pretrained_tag: str | None, checkpoint: Path | None) -> ResolvedWeights:
    """The tag and activation of `model` with `pretrained` (a tag, or the file `checkpoint`); see the module doc."""
    import open_clip

    config_quick_gelu = bool((open_clip.get_model_config(model) or {}).get("quick_gelu", False))
    torchscript = checkpoint is not None and is_torchscript_archive(checkpoint)
    tag = _weights_tag(model, pretrained, pretrained_tag, checkpoint, torchscript)
    if tag is None:
        _refuse_ambiguous_checkpoint(model, config_quick_gelu, checkpoint)
        return ResolvedWeights(None, config_quick_gelu, False, torchscript)
    tag_quick_gelu = bool(open_clip.get_pretrained_cfg(model, tag).get("quick_gelu", False))
    if config_quick_gelu and not tag_quick_gelu:
        raise ModelLoadError(f"model {model!r} uses QuickGELU but the {tag!r} weights were trained with GELU; "
                             f"use the architecture without '-quickgelu'")
    force = tag_quick_gelu and not config_quick_gelu
    if force:
        log.warning("%s with the %r weights: building it with QuickGELU, the activation those weights were "
                    "trained with (open_clip's %s-quickgelu); name that architecture to silence this",
                    model, tag, model)
    preprocess = _tag_preprocess(model, tag) if checkpoint is not None else {}
    return ResolvedWeights(tag, tag_quick_gelu, force, torchscript, preprocess)


def is_torchscript_archive(path: Path) -> bool:
    """A torch.jit.save zip (OpenAI's CLIP release format): it has a constants.pkl record."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("/constants.pkl") for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _weights_tag(model: str, pretrained: str, pretrained_tag: str | None, checkpoint: Path | None,
                 torchscript: bool) -> str | None:
    import open_clip

    if checkpoint is None and pretrained_tag and not _same_tag(pretrained_tag, pretrained):
        raise ModelLoadError(f"model {model!r}: pretrained tag {pretrained!r} and pretrained_tag "
                             f"{pretrained_tag!r} disagree; pretrained_tag is for checkpoint files")
    tag = pretrained if checkpoint is None else pretrained_tag
    if tag and not open_clip.get_pretrained_cfg(model, tag):
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(model)) or "none"
        raise ModelLoadError(f"model {model!r}: pretrained_tag {tag!r} is not one of its open_clip tags ({tags})")
    if tag is None and torchscript and open_clip.get_pretrained_cfg(model, OPENAI_TAG):
        return OPENAI_TAG
    return tag or None


def _same_tag(first: str, second: str) -> bool:
    return first.lower().replace("-", "_") == second.lower().replace("-", "_")


def _refuse_ambiguous_checkpoint(model: str, config_quick_gelu: bool, checkpoint: Path | None) -> None:
    """A file of an architecture whose known weights need an activation its config does not give."""
    import open_clip

    tags = open_clip.list_pretrained_tags_by_model(model)
    other = [tag for tag in tags if bool(open_clip.get_pretrained_cfg(model, tag).get("quick_gelu")) != config_quick_gelu]
    if checkpoint is None or not other:
        return
    raise ModelLoadError(
        f"model {model!r}: checkpoint {str(checkpoint)!r} could hold weights trained with either activation "
        f"(open_clip's tags for {model}: {', '.join(other)} use {'GELU' if config_quick_gelu else 'QuickGELU'}, "
        f"the others {'QuickGELU' if config_quick_gelu else 'GELU'}) and the file does not say which; set "
        f"pretrained_tag to the tag it holds (e.g. pretrained_tag={other[0]})"
        + ("" if config_quick_gelu else f" or name the architecture {model}-quickgelu if it needs QuickGELU"))


def _tag_preprocess(model: str, tag: str) -> dict[str, Any]:
    import open_clip

    tag_cfg = open_clip.get_pretrained_cfg(model, tag)
    return {argument: tag_cfg[key] for key, argument in PREPROCESS_ARGUMENTS.items() if key in tag_cfg}
