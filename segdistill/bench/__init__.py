"""The benchmark: a tool beside the stages that times the engine's own training step (``train``),
inference (``infer``) and the input pipeline (``data``), and formats the results (``report``)."""
