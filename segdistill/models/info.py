"""Parameter counts per part and FLOPs of a model at a given input size."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@dataclass
class ModelInfo:
    """What ``segdistill info`` prints."""

    name: str
    input_size: tuple[int, int]
    params: dict[str, int]
    flops: dict[str, int]

    def table(self) -> str:
        """A markdown table: parameters (M) and forward GFLOPs per part."""
        rows = [f"model {self.name}, input 1x3x{self.input_size[0]}x{self.input_size[1]}", "",
                "| part | params (M) | GFLOPs |", "| --- | ---: | ---: |"]
        for part in self.params:
            rows.append(f"| {part} | {self.params[part] / 1e6:.3f} | {self.flops.get(part, 0) / 1e9:.2f} |")
        return "\n".join(rows)


def count_params(model: nn.Module) -> dict[str, int]:
    """Parameters of each top-level child and in total."""
    out = {name: sum(p.numel() for p in child.parameters()) for name, child in model.named_children()}
    out["total"] = sum(p.numel() for p in model.parameters())
    return out


@torch.no_grad()
def model_info(model: nn.Module, name: str, input_size: tuple[int, int] = (512, 1024)) -> ModelInfo:
    """Count parameters and forward FLOPs (one image, eval mode, both heads) with torch's flop counter."""
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False, depth=1)
    with counter:
        model(torch.zeros(1, 3, *input_size))
    model.train(was_training)
    # The counter keys modules by their path under the root ("Global" is the total).
    by_module = counter.get_flop_counts()
    flops = {child: sum(by_module.get(f"{type(model).__name__}.{child}", {}).values())
             for child, _ in model.named_children()}
    flops["total"] = sum(by_module.get("Global", {}).values())
    return ModelInfo(name, tuple(input_size), count_params(model), flops)
