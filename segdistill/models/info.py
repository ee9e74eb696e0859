"""Parameter counts per part and FLOPs of a model at a given input size."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
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
        rows.append(f"| inference (no auxiliary heads) | {self.inference_params / 1e6:.3f} | "
                    f"{self.inference_flops / 1e9:.2f} |")
        return "\n".join(rows)

    @property
    def inference_params(self) -> int:
        """Parameters a deployed model keeps: everything but the auxiliary heads (training-only)."""
        return self.params["total"] - self.params.get("auxiliary_head", 0)

    @property
    def inference_flops(self) -> int:
        """FLOPs of what inference runs, backbone and decode head; mmseg's ``get_flops`` counts the same part."""
        return self.flops["total"] - self.flops.get("auxiliary_head", 0)


def count_params(model: nn.Module) -> dict[str, int]:
    """Parameters of each top-level child and in total."""
    out = {name: sum(p.numel() for p in child.parameters()) for name, child in model.named_children()}
    out["total"] = sum(p.numel() for p in model.parameters())
    return out


@torch.no_grad()
def model_info(model: nn.Module, name: str, input_size: tuple[int, int] = (512, 1024)) -> ModelInfo:
    """Count parameters and forward FLOPs (one image, eval mode, both heads) with torch's flop counter.

    FLOPs follow torch's ``FlopCounterMode``: a multiply-add is 2 FLOPs. The forward runs on a copy of the
    model on the meta device, so any input size costs no compute and no memory, with attention forced to
    its math form: the fused kernels of ``scaled_dot_product_attention`` (CPU flash attention) are invisible
    to the counter, which would leave SegFormer's attention uncounted.
    """
    probe = copy.deepcopy(model).to("meta").eval()
    counter = FlopCounterMode(display=False, depth=1)
    with counter, sdpa_kernel(SDPBackend.MATH):
        probe(torch.zeros(1, 3, *input_size, device="meta"))
    # The counter keys modules by their path under the root ("Global" is the total). An nn.ModuleList of
    # heads is never called itself, so its members' counts are added up.
    by_module = {key: sum(ops.values()) for key, ops in counter.get_flop_counts().items()}
    root = type(model).__name__

    def part(child: str) -> int:
        key = f"{root}.{child}"
        if key in by_module:
            return by_module[key]
        depth = key.count(".") + 1
        return sum(n for k, n in by_module.items() if k.startswith(f"{key}.") and k.count(".") == depth)

    flops = {child: part(child) for child, _ in model.named_children()}
    flops["total"] = by_module.get("Global", 0)
    return ModelInfo(name, (int(input_size[0]), int(input_size[1])), count_params(model), flops)
