"""CLIP score: cosine similarity between an image's and its caption's CLIP embeddings.

LAION-400M and LAION-5B (English) kept pairs whose OpenAI ViT-B/32 similarity
was at least 0.3 and 0.28; hence the default model, weights and threshold.  A
threshold only means something for the model it was calibrated on: change it
with the model.  DataComp's "keep the top 30%" rule needs the whole dataset,
so it is a separate stage (`top_fraction`) reading the `clip_score` field.

Fields: `clip_score` (float, None when the image does not decode or there is
no caption) and, with `store_embeddings`, `clip_image_embedding` and
`clip_text_embedding`: L2-normalised embeddings rounded to float16 (about 3
significant digits, norms within ~1e-3 of 1), lists of floats on the sample
for later stages (`aesthetic`).  The shards store them as `list<float16>`
Parquet columns, not in the `.json` (pipeline.engine.shard_schema), for
deduplication or re-scoring; with `embeddings_file: npz` they go instead to
`shards/<shard>.npz` beside each shard, in DataComp's layout (arrays
`b32_img` and `b32_txt` for ViT-B-32, `l14_img`/`l14_txt` for ViT-L-14, or
`<embeddings_name>_img`/`_txt`, plus `key`; pipeline.engine.embedding_files), so
they can be re-ranked or clustered later without recomputing.

With `mask_text` (T-MARS, Maini et al. 2023): images often carry text that
repeats the caption, which CLIP matches without looking at the picture.  The
text regions found by the watermark stage's OCR detector (RapidOCR's
PP-OCRv4 detector, pipeline.models.text_regions) are filled with the mean colour of
a thin ring around each, and the masked image is scored against the caption
too: `clip_score_masked` (the plain score when no text is found) and
`clip_text_regions` (how many regions were masked).  The image is scored as
RGB there; the stored image is never changed.  `threshold_on:
clip_score_masked` applies the threshold to the masked score, T-MARS's
filter (rejects then say `low_clip_score_masked`).

A sample without a caption (missing or blank) has nothing to align its image
with: it gets no score and, when a threshold is set, is dropped as
`no_caption`; its image embedding is still stored.  With `threshold: null`
the stage only adds fields and keeps everything.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pipeline.core.stage import Filter, Needs, StageContext
from pipeline.models import embedding_output
from pipeline.models.openclip import (
    ClipEncoder,
    ModelSource,
    caption_text,
    encoder_for,
    open_image,
    min_score_verdict,
)
from pipeline.models.text_regions import DEFAULT_SIDE, TextDetector, check_side, detector_file, mask_regions
from pipeline.core.params import ParamError
from pipeline.core.registry import register
from pipeline.core.records import Sample, Verdict


@register
class ClipScore(Filter):
    name = "clip_score"
    NEEDS = Needs(model=True)

    @dataclass(frozen=True)
    class Params:
        model: str = "ViT-B-32-quickgelu"
        pretrained: str = "openai"
        model_config: str | None = None
        pretrained_tag: str | None = None  # the open_clip tag a checkpoint file holds ("openai"): its activation
        threshold: float | None = 0.28  # drop lower similarities (LAION: 0.28 for ViT-B/32); null: only score
        store_embeddings: bool = False  # keep float16 image and text embeddings in the metadata
        # where stored embeddings go: Parquet list<float16> columns, or DataComp's shards/<shard>.npz
        embeddings_file: Literal["parquet", "npz"] = "parquet"
        embeddings_name: str | None = None  # .npz array prefix (<name>_img, _txt); null: from model (ViT-B-32: b32)
        mask_text: bool = False  # T-MARS: also score the image with its OCR-detected text masked (clip_score_masked)
        threshold_on: Literal["clip_score", "clip_score_masked"] = "clip_score"  # the score the threshold applies to
        text_detector_side: int = DEFAULT_SIDE  # mask_text: longer side for the text detector, multiple of 32
        batch_size: int = 64
        device: str = "cpu"

        def __post_init__(self):
            embedding_output.check(self, "clip_score")
            check_side(self.text_detector_side, "clip_score.text_detector_side")
            if self.threshold_on == "clip_score_masked" and not self.mask_text:
                raise ParamError("clip_score.threshold_on=clip_score_masked needs clip_score.mask_text: true")

    def source(self) -> ModelSource:
        return ModelSource.of(self.params)

    def check(self) -> None:
        self.source().check()
        if self.params.mask_text:
            detector_file()

    def setup(self, context: StageContext | None = None) -> None:
        super().setup(context)
        self.encoder: ClipEncoder = encoder_for(self.source())
        self._text_detector = TextDetector(side=self.params.text_detector_side) if self.params.mask_text else None

    def npz_arrays(self) -> dict[str, str]:
        return embedding_output.npz_arrays(self.params, {"clip_image_embedding": "img", "clip_text_embedding": "txt"})

    def score(self, batch: list[Sample]) -> None:
        images = [open_image(sample.image) for sample in batch]
        with_image = [i for i, image in enumerate(images) if image is not None]
        with_caption = [i for i in with_image if caption_text(batch[i]) is not None]
        image_embeddings = dict(zip(with_image, self.encoder.encode_images([images[i] for i in with_image])))
        text_embeddings = dict(
            zip(with_caption, self.encoder.encode_texts([caption_text(batch[i]) for i in with_caption]))
        )
        for i, sample in enumerate(batch):
            image_embedding = image_embeddings.get(i)
            sample.fields["clip_score"] = _cosine(image_embedding, text_embeddings.get(i))
            if self.params.store_embeddings:
                sample.fields["clip_image_embedding"] = embedding_output.float16_list(image_embedding)
                sample.fields["clip_text_embedding"] = embedding_output.float16_list(text_embeddings.get(i))
        if self._text_detector is not None:
            rgb = {i: images[i].convert("RGB") for i in with_caption}
            self._score_masked(batch, rgb, image_embeddings, text_embeddings)

    def _score_masked(self, batch: list[Sample], rgb: dict, image_embeddings: dict, text_embeddings: dict) -> None:
        """T-MARS: `clip_score_masked` with the text regions masked; only images with text are encoded again."""
        regions = {i: self._text_detector.regions(image)[0] for i, image in rgb.items()}
        with_text = [i for i, polygons in regions.items() if polygons]
        masked = self.encoder.encode_images([mask_regions(rgb[i], regions[i]) for i in with_text])
        masked_embeddings = {**image_embeddings, **dict(zip(with_text, masked))}
        for i, sample in enumerate(batch):
            sample.fields["clip_score_masked"] = _cosine(masked_embeddings.get(i), text_embeddings.get(i))
            sample.fields["clip_text_regions"] = len(regions[i]) if i in regions else None

    def keep(self, sample: Sample) -> Verdict:
        field = self.params.threshold_on
        return min_score_verdict(sample, field, self.params.threshold, f"low_{field}", needs_caption=True)


def _cosine(image_embedding, text_embedding) -> float | None:
    both = image_embedding is not None and text_embedding is not None
    return float(image_embedding @ text_embedding) if both else None
