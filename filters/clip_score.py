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
for later stages (`aesthetic`); the shards store them as `list<float16>`
Parquet columns, not in the `.json` (pipeline.engine.shard_schema), for
deduplication or re-scoring.

A sample without a caption (missing or blank) has nothing to align its image
with: it gets no score and, when a threshold is set, is dropped as
`no_caption`; its image embedding is still stored.  With `threshold: null`
the stage only adds fields and keeps everything.
"""
from __future__ import annotations

from dataclasses import dataclass

from pipeline.core.stage import Filter, Needs, StageContext
from pipeline.models.openclip import (
    ClipEncoder,
    ModelSource,
    caption_text,
    encoder_for,
    open_image,
    min_score_verdict,
)
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
        batch_size: int = 64
        device: str = "cpu"

    def source(self) -> ModelSource:
        return ModelSource.of(self.params)

    def check(self) -> None:
        self.source().check()

    def setup(self, context: StageContext | None = None) -> None:
        super().setup(context)
        self.encoder: ClipEncoder = encoder_for(self.source())

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
            text_embedding = text_embeddings.get(i)
            both = image_embedding is not None and text_embedding is not None
            sample.fields["clip_score"] = float(image_embedding @ text_embedding) if both else None
            if self.params.store_embeddings:
                sample.fields["clip_image_embedding"] = _float16_list(image_embedding)
                sample.fields["clip_text_embedding"] = _float16_list(text_embedding)

    def keep(self, sample: Sample) -> Verdict:
        return min_score_verdict(sample, "clip_score", self.params.threshold, "low_clip_score", needs_caption=True)


def _float16_list(embedding) -> list[float] | None:
    import torch

    return None if embedding is None else embedding.to(torch.float16).tolist()
