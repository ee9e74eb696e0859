"""Run ``segdistill.engine.trainer.train`` and record which samples this process loads.

    python tests/record_shards.py CONFIG WORK_DIR OUT_DIR                 # one process
    torchrun --standalone --nproc_per_node 2 tests/record_shards.py ...  # every rank

Writes ``OUT_DIR/rank<R>.json``: ``{"train": [[dataset index, stream position], ...], "eval": [index, ...]}``
in the order this rank loaded them. tests/test_distributed.py compares the ranks with one process.
The config must use ``data.workers=0``, so every sample is loaded in this process, in step order.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from segdistill.config import load_config
from segdistill.data import datasets
from segdistill.engine.distributed import cleanup
from segdistill.engine.trainer import train


def main(config: str, work_dir: str, out_dir: str) -> None:
    cfg = load_config(config)
    assert cfg.data.workers == 0, "samples loaded in worker processes would not be recorded"
    seen: dict[str, list[Any]] = {"train": [], "eval": []}
    load_train, load_eval = datasets.TrainSet.__getitem__, datasets.EvalSet.__getitem__

    def record_train(self: datasets.TrainSet, key: tuple[int, int]) -> Any:
        seen["train"].append([int(key[0]), int(key[1])])
        return load_train(self, key)

    def record_eval(self: datasets.EvalSet, index: int) -> Any:
        seen["eval"].append(int(index))
        return load_eval(self, index)

    datasets.TrainSet.__getitem__ = record_train  # type: ignore[method-assign]
    datasets.EvalSet.__getitem__ = record_eval  # type: ignore[method-assign]
    try:
        train(cfg, Path(work_dir), resume=False)
    finally:
        rank = int(os.environ.get("RANK", "0"))
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(seen))
        cleanup()


if __name__ == "__main__":
    main(*sys.argv[1:4])
