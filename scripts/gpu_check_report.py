"""The table at the end of ``scripts/gpu_check.sh``: one markdown table from the files it left in its folder.

    python scripts/gpu_check_report.py OUT_DIR [--wall SECONDS]

Reads ``sections.tsv`` (name, exit code or status, seconds per step), ``environment.json``,
``tests.xml`` (pytest's junit XML, xunit1, with each test's ``record_property`` numbers),
``bench_b*.json`` (``segdistill bench --json``) and ``camvid/{teacher,student}/results.json``.
Prints ``| check | result | numbers |`` and exits 0 when nothing failed, else 1.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

Row = tuple[str, str, str]


def _sections(out: Path) -> dict[str, tuple[str, int]]:
    """name -> (status, seconds); status is the exit code as text, 'budget', or a 'skipped: ...' line."""
    found: dict[str, tuple[str, int]] = {}
    path = out / "sections.tsv"
    for line in path.read_text().splitlines() if path.exists() else []:
        name, status, seconds = line.split("\t")
        found[name] = (status, int(seconds))
    return found


def _status(sections: dict[str, tuple[str, int]], name: str) -> str | None:
    """None when the step ran and exited 0, else what the result column should say."""
    if name not in sections:
        return "not run"
    status, seconds = sections[name]
    if status == "0":
        return None
    if status == "budget":
        return "not run: out of time budget"
    if status.startswith("skipped"):
        return status
    if status in ("124", "130", "137"):
        return f"**timeout** after {seconds} s"
    return f"**fail** (exit {status}, see {name}.log)"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def environment_row(out: Path) -> Row:
    env = _read_json(out / "environment.json") or {}
    parts = [env.get("gpu", "no GPU"), f"{env['memory_gib']} GiB" if "memory_gib" in env else "",
             f"driver {env['driver']}" if env.get("driver") else "", f"torch {env.get('torch')}",
             f"CUDA {env.get('cuda')}", f"cuDNN {env.get('cudnn')}"]
    return "environment", "-", ", ".join(p for p in parts if p)


def _outcomes_from_log(log: Path) -> list[Row]:
    """Each test's outcome from pytest's ``-v`` lines, when no junit XML was written (the numbers are lost)."""
    text = log.read_text(errors="replace") if log.exists() else ""
    found = re.findall(r"^tests/test_cuda\.py::(\S+) (PASSED|FAILED|SKIPPED|ERROR)", text, flags=re.MULTILINE)
    words = {"PASSED": "pass", "FAILED": "**fail**", "ERROR": "**fail**", "SKIPPED": "skipped"}
    return [(f"test {name}", words[outcome], "(no junit XML: numbers lost)") for name, outcome in found]


def test_rows(out: Path, sections: dict[str, tuple[str, int]]) -> list[Row]:
    xml = out / "tests.xml"
    status = _status(sections, "tests")
    if not xml.exists():
        return [*_outcomes_from_log(out / "tests.log"),
                ("CUDA tests (tests/test_cuda.py)", status or "**fail**: no junit XML", "see tests.log")]
    rows = []
    for case in ET.parse(xml).getroot().iter("testcase"):
        name = case.get("name")
        if not name:  # an interrupted session adds an empty one
            continue
        numbers = "; ".join(f"{p.get('name')} {p.get('value')}" for p in case.iter("property"))
        if (bad := case.find("failure")) is not None or (bad := case.find("error")) is not None:
            message = (bad.get("message") or "").splitlines()[0][:160] if bad.get("message") else ""
            result, numbers = "**fail**", "; ".join(x for x in (numbers, message) if x)
        elif (skip := case.find("skipped")) is not None:
            result = f"skipped: {(skip.get('message') or '').removeprefix('Skipped: ')}"
        else:
            result = "pass"
        rows.append((f"test {name}", result, numbers.replace("|", "/")))
    if status and not any(r[1].startswith("**fail") for r in rows):
        rows.append(("CUDA tests (tests/test_cuda.py)", status, "the run ended early: see tests.log"))
    return rows


def bench_rows(out: Path, sections: dict[str, tuple[str, int]]) -> list[Row]:
    rows = []
    names = sorted((n for n in sections if n.startswith("bench_b")), key=lambda n: int(n.removeprefix("bench_b")))
    for name in names:
        status = _status(sections, name)
        report = _read_json(out / f"{name}.json")
        if status or not report:
            rows.append((f"bench batch {name.removeprefix('bench_b')}", status or "**fail**: no JSON", ""))
            continue
        for r in report.get("train", []):
            mem = r.get("memory", {})
            crop = "x".join(str(c) for c in r.get("crop", []))
            numbers = (f"{r['images_per_s']:.2f} img/s, step {r['median_ms']['step']:.1f} ms, "
                       f"peak {mem.get('peak_mb', float('nan')) / 1024:.2f} GiB ({mem.get('kind', '?')}), "
                       f"{r['flops_per_s'] / 1e12:.3g} TFLOP/s achieved")
            rows.append((f"bench {r.get('label')}, batch {r.get('batch')}, {crop}", "ok", numbers))
        if "all_on_over_all_off" in report:
            rows.append((f"bench batch {name.removeprefix('bench_b')}: all on / all off", "ok",
                         f"step time ratio {report['all_on_over_all_off']:.3f}"))
    return rows


def camvid_rows(out: Path, sections: dict[str, tuple[str, int]]) -> list[Row]:
    if "camvid" in sections:  # skipped as a whole (no data)
        return [("CamVid 300-iteration distillation", sections["camvid"][0], "")]
    rows = []
    for name, what in (("camvid_teacher", "CamVid teacher PSPNet-R50-D8 from scratch"),
                       ("camvid_student", "CamVid student PSPNet-R18-D8 + CWD from that teacher")):
        status = _status(sections, name)
        result = _read_json(out / "camvid" / name.removeprefix("camvid_") / "results.json")
        if status or not result:
            rows.append((what, status or "**fail**: no results.json", ""))
            continue
        numbers = (f"{result['iterations']} it, wall {sections[name][1]} s (training + evaluation "
                   f"{result['wall_time_s']:.0f} s), mIoU {result['final']['mIoU']:.2f}")
        if result.get("teacher"):
            numbers += f" (teacher {result['teacher']['mIoU']:.2f})"
        rows.append((what, "ok", numbers))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--wall", type=int, help="the whole check's wall time in seconds")
    args = parser.parse_args(argv)
    sections = _sections(args.out)
    rows = [environment_row(args.out), *test_rows(args.out, sections), *bench_rows(args.out, sections),
            *camvid_rows(args.out, sections)]
    failed = any(r[1].startswith(("**fail", "**timeout", "not run")) for r in rows)
    wall = f"wall {args.wall // 60} min {args.wall % 60} s, " if args.wall is not None else ""
    rows.append(("gpu_check", "**FAILED**" if failed else "passed", f"{wall}files in {args.out}"))
    print("| check | result | numbers |")
    print("| --- | --- | --- |")
    for check, result, numbers in rows:
        print(f"| {check} | {result} | {numbers} |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
