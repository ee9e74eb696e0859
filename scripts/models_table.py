"""The model table of docs/models.md: measure every zoo model, then render the markdown table.

    python scripts/models_table.py measure --out /tmp/models_table.json   # slow: CPU latency of 22 models
    python scripts/models_table.py render /tmp/models_table.json          # prints the markdown table

``measure`` counts, for each model, the parameters and the FLOPs of inference (backbone + decode head)
at 512x1024 and 1024x2048 with the function behind ``segdistill info`` (its "inference" row), and runs

    segdistill bench CONFIG [student.model=MODEL] --mode infer --crop 512 1024 --batch 1 --iters 3 --warmup 1
        --no-compile --no-onnx --json ...

in a subprocess with ``OMP_WAIT_POLICY=PASSIVE``, on the model's config in configs/cityscapes/ (or, for a
model without one, a config of its family with ``student.model`` overridden; the bench builds the
network alone and downloads nothing). The JSON is rewritten after every model and a rerun skips the
models already measured, so the measurement can run in the background and be resumed.

The mmseg Cityscapes mIoU and checkpoint URL come from the config's ``# released: URL (mIoU xx.xx)``
line, or, for models without a config here, from :data:`RELEASED` (mmseg's model zoo pages).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "cityscapes"
SIZES = ((512, 1024), (1024, 2048))

# (model, config file in configs/cityscapes/, whether the config names another student and needs the override)
ROWS: list[tuple[str, str, bool]] = [
    ("stdc1", "stdc1_80k.yaml", False),
    ("stdc2", "stdc2_80k.yaml", False),
    ("bisenetv2", "bisenetv2_160k.yaml", False),
    ("segformer_mit-b0", "segformer_mit-b0_160k.yaml", False),
    ("segformer_mit-b1", "segformer_mit-b1_160k.yaml", False),
    ("segformer_mit-b2", "segformer_mit-b2_160k.yaml", False),
    ("segformer_mit-b3", "segformer_mit-b0_160k.yaml", True),
    ("segformer_mit-b4", "segformer_mit-b0_160k.yaml", True),
    ("segformer_mit-b5", "segformer_mit-b0_160k.yaml", True),
    ("fcn_m-v2-d8", "fcn_m-v2-d8_80k.yaml", False),
    ("pspnet_m-v2-d8", "pspnet_m-v2-d8_80k.yaml", False),
    ("deeplabv3_m-v2-d8", "deeplabv3_m-v2-d8_80k.yaml", False),
    ("deeplabv3plus_m-v2-d8", "deeplabv3plus_m-v2-d8_80k.yaml", False),
    ("pspnet_r18-d8", "pspnet_r18-d8_80k_baseline.yaml", False),
    ("deeplabv3_r18-d8", "pspnet_r18-d8_80k_baseline.yaml", True),
    ("deeplabv3plus_r18-d8", "deeplabv3plus_r18-d8_80k.yaml", False),
    ("pspnet_r50-d8", "pspnet_r18-d8_80k_baseline.yaml", True),
    ("deeplabv3_r50-d8", "pspnet_r18-d8_80k_baseline.yaml", True),
    ("deeplabv3plus_r50-d8", "deeplabv3plus_r50-d8_80k.yaml", False),
    ("pspnet_r101-d8", "pspnet_r18-d8_80k_baseline.yaml", True),
    ("deeplabv3_r101-d8", "pspnet_r18-d8_80k_baseline.yaml", True),
    ("deeplabv3plus_r101-d8", "deeplabv3plus_r101-d8_80k.yaml", False),
]

_V05 = "https://download.openmmlab.com/mmsegmentation/v0.5/"
# mmseg's released Cityscapes checkpoints of the models that have no config of their own here
# (80k 512x1024 configs; SegFormer: 160k 1024x1024), with the single-scale mIoU mmseg reports.
RELEASED: dict[str, tuple[str, float]] = {
    "pspnet_r18-d8": (_V05 + "pspnet/pspnet_r18-d8_512x1024_80k_cityscapes/"
                      "pspnet_r18-d8_512x1024_80k_cityscapes_20201225_021458-09ffa746.pth", 74.87),
    "pspnet_r50-d8": (_V05 + "pspnet/pspnet_r50-d8_512x1024_80k_cityscapes/"
                      "pspnet_r50-d8_512x1024_80k_cityscapes_20200606_112131-2376f12b.pth", 78.55),
    "pspnet_r101-d8": (_V05 + "pspnet/pspnet_r101-d8_512x1024_80k_cityscapes/"
                       "pspnet_r101-d8_512x1024_80k_cityscapes_20200606_112211-e1e1100f.pth", 79.76),
    "deeplabv3_r18-d8": (_V05 + "deeplabv3/deeplabv3_r18-d8_512x1024_80k_cityscapes/"
                         "deeplabv3_r18-d8_512x1024_80k_cityscapes_20201225_021506-23dffbe2.pth", 76.70),
    "deeplabv3_r50-d8": (_V05 + "deeplabv3/deeplabv3_r50-d8_512x1024_80k_cityscapes/"
                         "deeplabv3_r50-d8_512x1024_80k_cityscapes_20200606_113404-b92cfdd4.pth", 79.32),
    "deeplabv3_r101-d8": (_V05 + "deeplabv3/deeplabv3_r101-d8_512x1024_80k_cityscapes/"
                          "deeplabv3_r101-d8_512x1024_80k_cityscapes_20200606_113503-9e428899.pth", 80.20),
    "segformer_mit-b3": (_V05 + "segformer/segformer_mit-b3_8x1_1024x1024_160k_cityscapes/"
                         "segformer_mit-b3_8x1_1024x1024_160k_cityscapes_20211206_224823-a8f8a177.pth", 81.94),
    "segformer_mit-b4": (_V05 + "segformer/segformer_mit-b4_8x1_1024x1024_160k_cityscapes/"
                         "segformer_mit-b4_8x1_1024x1024_160k_cityscapes_20211207_080709-07f6c333.pth", 81.89),
    "segformer_mit-b5": (_V05 + "segformer/segformer_mit-b5_8x1_1024x1024_160k_cityscapes/"
                         "segformer_mit-b5_8x1_1024x1024_160k_cityscapes_20211206_072934-87a052ec.pth", 82.25),
}
_RELEASED_LINE = re.compile(r"^# released: (\S+) \(mIoU ([0-9.]+)\)$", re.M)
_FP32 = "eager fp32"
_FAST = "eager fast path (fold_bn+channels_last+bf16)"


def released(model: str, config: str, override: bool) -> tuple[str, float]:
    """mmseg's released checkpoint URL and mIoU: the config's ``# released:`` line, else :data:`RELEASED`."""
    if not override:
        found = _RELEASED_LINE.search((CONFIGS / config).read_text())
        if found:
            return found.group(1), float(found.group(2))
    return RELEASED[model]


def count(model: str) -> dict[str, dict[str, float]]:
    """Parameters (M) and inference GFLOPs at each of :data:`SIZES`, as ``segdistill info`` prints them."""
    import torch

    from segdistill.models import build_segmentor, model_info

    with torch.device("meta"):  # model_info counts on the meta device anyway; building there costs nothing
        net = build_segmentor(model, 19)
    out = {}
    for h, w in SIZES:
        info = model_info(net, model, (h, w))
        out[f"{h}x{w}"] = {"params_m": info.inference_params / 1e6, "gflops": info.inference_flops / 1e9}
    return out


def bench(model: str, config: str, override: bool) -> dict:
    """Run ``segdistill bench --mode infer`` on the model in a subprocess; its JSON report."""
    with tempfile.TemporaryDirectory(prefix="models-table-") as tmp:
        report = Path(tmp) / "bench.json"
        cmd = [sys.executable, "-m", "segdistill.cli", "bench", f"configs/cityscapes/{config}",
               *([f"student.model={model}"] if override else []),
               "--mode", "infer", "--crop", "512", "1024", "--batch", "1", "--iters", "3", "--warmup", "1",
               "--no-compile", "--no-onnx", "--no-progress", "--json", str(report)]
        env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1], "command": " ".join(cmd[1:])}
        data = json.loads(report.read_text())
    rows = {r["backend"]: r["latency_ms"] for r in data["infer"] if r["role"] == "student" and r["batch"] == 1}
    return {"fp32_ms": rows.get(_FP32), "fast_ms": rows.get(_FAST), "machine": data["machine"],
            "date": data["date"], "command": "segdistill " + " ".join(cmd[3:-2])}


def _runs(row: dict) -> list[dict]:
    """The bench runs of a row (a row written before ``runs`` existed is one run)."""
    if "runs" in row:
        return row["runs"]
    return [{k: row[k] for k in ("fp32_ms", "fast_ms", "machine", "date", "command", "error") if k in row}]


def measure(out: Path, only: list[str], passes: int) -> None:
    """Measure every row (or ``only``) into ``out`` until it has ``passes`` bench runs, rewriting the file after
    each run; a rerun continues where the last one stopped. On a shared machine several passes, taken at
    different times, let the table keep each model's least disturbed (fastest) run."""
    results = json.loads(out.read_text()) if out.exists() else {"models": {}}
    for _ in range(passes):
        for model, config, override in ROWS:
            row = results["models"].get(model)
            if (only and model not in only) or (row is not None and len(_runs(row)) >= passes):
                continue
            start = time.time()
            if row is None:
                row = {"config": config, "override": override, "counts": count(model), "runs": []}
            row = {"config": config, "override": override, "counts": row["counts"], "runs": _runs(row)}
            if row["runs"] and not any("fp32_ms" in r for r in row["runs"]):
                row["runs"] = []  # only failed runs so far: try again
            run = bench(model, config, override)
            row["runs"].append({**run, "wall_s": round(time.time() - start, 1)})
            results["models"][model] = row
            tmp = out.with_suffix(".tmp")
            tmp.write_text(json.dumps(results, indent=1))
            tmp.replace(out)
            lat = "error: " + run["error"] if "error" in run else f"{run['fp32_ms']:.0f} / {run['fast_ms']:.0f} ms"
            load = run.get("machine", {}).get("load_average_start")
            print(f"{model} run {len(row['runs'])}: {lat}, load {load}", flush=True)


def _ms(value: float | None) -> str:
    return "n/a" if value is None else (f"{value:,.0f}" if value >= 100 else f"{value:.1f}")


def render(path: Path) -> str:
    """The markdown table of docs/models.md from a ``measure`` JSON."""
    models = json.loads(path.read_text())["models"]
    lines = ["| model | params (M) | GFLOPs 512×1024 | GFLOPs 1024×2048 | CPU ms fp32 | CPU ms fast path | "
             "load (1 min) | mmseg mIoU | released checkpoint | config |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
    for model, config, override in ROWS:
        if model not in models:
            continue
        row = models[model]
        small, large = row["counts"]["512x1024"], row["counts"]["1024x2048"]
        url, miou = released(model, config, override)
        # One run per row, the least disturbed: the fastest float32 one, with its fast path and its load.
        run = min((r for r in _runs(row) if r.get("fp32_ms") is not None), key=lambda r: r["fp32_ms"], default={})
        load = run.get("machine", {}).get("load_average_start")
        cfg = "—" if override else f"[{config}](../configs/cityscapes/{config})"
        lines.append(f"| `{model}` | {small['params_m']:.2f} | {small['gflops']:.1f} | {large['gflops']:.1f} | "
                     f"{_ms(run.get('fp32_ms'))} | {_ms(run.get('fast_ms'))} | "
                     f"{'n/a' if load is None else f'{load:.1f}'} | {miou:.2f} | [checkpoint]({url}) | {cfg} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("measure", help="count and time every model into a JSON file (resumable)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--only", nargs="*", default=[], help="just these models")
    p.add_argument("--passes", type=int, default=1, help="bench runs per model; the table keeps the fastest")
    p = sub.add_parser("render", help="print the markdown table of a measure JSON")
    p.add_argument("json", type=Path)
    args = parser.parse_args(argv)
    if args.command == "measure":
        measure(args.out, args.only, args.passes)
    else:
        print(render(args.json))
    return 0


if __name__ == "__main__":
    sys.exit(main())
