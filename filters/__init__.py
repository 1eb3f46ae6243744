"""Filter stages, one per module, each registered by name (see pipeline.core.registry)."""
