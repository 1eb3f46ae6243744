"""Resolution and aspect-ratio limits on the image as downloaded (before resize)."""
from __future__ import annotations

from dataclasses import dataclass

from pipeline.core.stage import Filter, Needs
from pipeline.core.registry import register
from pipeline.core.records import KEEP, Sample, Verdict, drop


@register
class ResolutionFilter(Filter):
    name = "resolution"
    NEEDS = Needs(pixels=False)

    @dataclass(frozen=True)
    class Params:
        min_side: int = 0  # shorter side, pixels
        max_side: int | None = None  # longer side, pixels
        min_pixels: int = 0  # width x height
        max_aspect_ratio: float | None = None  # longer side / shorter side

    def keep(self, sample: Sample) -> Verdict:
        width, height = sample.original_width, sample.original_height
        if not width or not height:
            return drop("unknown_size")
        short, long = sorted((width, height))
        if short < self.params.min_side or width * height < self.params.min_pixels:
            return drop("too_small")
        if self.params.max_side is not None and long > self.params.max_side:
            return drop("too_large")
        if self.params.max_aspect_ratio is not None and long / short > self.params.max_aspect_ratio:
            return drop("bad_aspect_ratio")
        return KEEP
