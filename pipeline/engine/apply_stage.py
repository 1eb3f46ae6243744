"""One stage applied to the samples, whatever its kind: {"samples": kept, REJECTED: rejects}."""
from __future__ import annotations

import apache_beam as beam
from apache_beam.metrics import Metrics

from pipeline.core.records import REJECTED, Sample
from pipeline.core.stage import DatasetStage, SampleStage, StageContext

class _ScoreAndKeep(beam.DoFn):
    """Applies a stage's keep(), scoring first unless RunInference did."""

    def __init__(self, stage: SampleStage, scored: bool, context: StageContext):
        self._stage, self._scored, self._context = stage, scored, context
        self._kept = Metrics.counter(stage.name, "kept")
        self._dropped = Metrics.counter(stage.name, "dropped")

    def setup(self):
        if not self._scored:
            self._stage.setup(self._context)

    def _decide(self, sample: Sample):
        if not self._scored:
            self._stage.score([sample])
        return self._stage.keep(sample)

    def process(self, sample: Sample):
        verdict = self._decide(sample)
        if verdict.keep:
            self._kept.inc()
            yield sample
        else:
            self._dropped.inc()
            Metrics.counter(self._stage.name, f"dropped:{verdict.reason}").inc()
            yield beam.pvalue.TaggedOutput(REJECTED, sample.reject(self._stage.name, verdict.reason))


class ApplyStage(beam.PTransform):
    """One stage: {"samples": kept, REJECTED: rejects}, whatever its kind."""

    def __init__(self, stage, context: StageContext):
        super().__init__()
        self._stage, self._context = stage, context

    def expand(self, samples):
        stage = self._stage
        if isinstance(stage, DatasetStage):
            result = samples | stage.transform()
            outputs = {"samples": result["kept"], REJECTED: result["rejected"]}
            if "report" in result:
                section, name = stage.report_section, stage.name
                outputs["report"] = result["report"] | "NameReport" >> beam.Map(lambda r: (section, name, r))
            return outputs
        uses_model = stage.needs().model
        if uses_model:
            from pipeline.engine.inference import score_with_model  # imports torch: only for model stages

            samples = samples | "Score" >> score_with_model(stage, self._context)
        outputs = samples | "Keep" >> beam.ParDo(_ScoreAndKeep(stage, uses_model, self._context)).with_outputs(
            REJECTED, main="samples"
        )
        return {"samples": outputs.samples, REJECTED: outputs[REJECTED]}
