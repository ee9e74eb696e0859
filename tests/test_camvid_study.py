"""Tests for the CamVid study script's statistics (scripts/camvid_study.py)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "camvid_study.py"


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("camvid_study", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_paired_t_matches_closed_form_for_two_degrees_of_freedom(study) -> None:
    deltas = [1.57, 2.97, 0.4]
    t, p = study.paired_t(deltas)
    mean = sum(deltas) / 3
    sd = math.sqrt(sum((d - mean) ** 2 for d in deltas) / 2)
    assert t == pytest.approx(mean / (sd / math.sqrt(3)))
    # For 2 degrees of freedom the Student-t tail has a closed form.
    assert p == pytest.approx(0.5 * (1 - t / math.sqrt(t * t + 2)), abs=1e-9)


def test_paired_t_matches_table_values(study) -> None:
    # t(0.975, df=2) = 4.303 and t(0.95, df=4) = 2.132 from any t table: one-sided p 0.025 and 0.05.
    _, p2 = study.paired_t([4.303 / math.sqrt(3) + x for x in (-1.0, 0.0, 1.0)])
    assert p2 == pytest.approx(0.025, abs=2e-4)
    deltas = [-1.0, -0.5, 0.0, 0.5, 1.0]
    sd = math.sqrt(sum(d * d for d in deltas) / 4)
    _, p4 = study.paired_t([d + 2.132 * sd / math.sqrt(5) for d in deltas])
    assert p4 == pytest.approx(0.05, abs=2e-4)


def test_paired_t_sign_and_degenerate_cases(study) -> None:
    t, p = study.paired_t([-1.0, -2.0, -1.5])
    assert t < 0 and p > 0.5
    assert study.paired_t([1.0, 1.0]) == (math.inf, 0.0)
    with pytest.raises(ValueError):
        study.paired_t([1.0])
