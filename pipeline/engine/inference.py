"""Model stages through Beam's RunInference.

Kept apart from pipeline.engine.download_images because importing Beam's inference module
pulls in torch and scipy (about 1.5 CPU-seconds in the launcher and in every
worker): recipes without a model stage never import this module.
"""
from __future__ import annotations

from typing import Any

import apache_beam as beam
from apache_beam.ml.inference.base import ModelHandler, RunInference

from pipeline.core.stage import SampleStage, StageContext


class StageModelHandler(ModelHandler):
    """Lets RunInference batch samples and share one loaded stage per process."""

    def __init__(self, stage: SampleStage, context: StageContext):
        super().__init__()
        self._stage, self._context = stage, context

    def load_model(self) -> SampleStage:
        self._stage.setup(self._context)
        return self._stage

    def run_inference(self, batch, model, inference_args=None):
        model.score(list(batch))
        return batch

    def batch_elements_kwargs(self) -> dict[str, Any]:
        size = getattr(self._stage.params, "batch_size", 32)
        return {"min_batch_size": 1, "max_batch_size": size}

    def share_model_across_processes(self) -> bool:
        return False


def score_with_model(stage: SampleStage, context: StageContext) -> beam.PTransform:
    """Samples -> the same samples, scored by `stage` in batches."""
    return RunInference(StageModelHandler(stage, context))
