"""Image-text dataset curation on Apache Beam.

The library's entry points, the same job `curate run` runs:

    from pipeline import run_job, JobError
    result = run_job("local-sample", ["urls.parquet"], "out/", ["--direct_num_workers=2"])

They are loaded on first use (PEP 562), so importing a core module such as
`pipeline.core.records` does not import Beam and every layer above it.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "run_job": "pipeline.tools.launch",
    "JobResult": "pipeline.tools.launch",
    "load_job_recipe": "pipeline.tools.launch",
    "JobError": "pipeline.core.errors",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
