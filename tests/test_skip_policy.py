"""tests/skip_policy.py: on CI, skips for want of ../shared or an extra fail; other skips stay skips.

A small test file with one test per kind of skip runs in a fresh pytest process with the hook
(``-p skip_policy``), once with ``CI=true`` and once without; the outcomes are read from JUnit XML.
"""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

SAMPLE = '''
import sys
import pytest

from skip_policy import SHARED_SKIP


def test_needs_shared():
    pytest.skip(f"/nowhere/shared/reference not present ({SHARED_SKIP})")


@pytest.fixture
def reference():
    pytest.skip(f"/nowhere/shared/reference not present ({SHARED_SKIP})")


def test_needs_shared_through_a_fixture(reference):
    pass


def test_needs_an_extra():
    sys.modules["onnxruntime"] = None  # as if the [export] extra were not installed
    pytest.importorskip("onnxruntime")


def test_needs_a_submodule_of_an_extra():
    sys.modules["cityscapesscripts"] = None
    pytest.importorskip("cityscapesscripts.preparation.json2labelImg")


def test_needs_cuda():
    pytest.skip("CUDA is not available (torch.cuda.is_available() is False); run scripts/gpu_check.sh on a GPU")


def test_needs_an_optional_module_that_is_no_extra():
    pytest.importorskip("no_such_module_of_any_extra")


@pytest.mark.skipif(True, reason="needs /proc to find torchrun's workers")
def test_skipif_marker():
    pass


@pytest.mark.xfail(reason="a known bug")
def test_expected_failure():
    assert False


def test_passes():
    pass
'''

NEEDS_CI_RESOURCE = {"test_needs_shared", "test_needs_shared_through_a_fixture", "test_needs_an_extra",
                     "test_needs_a_submodule_of_an_extra"}
STAYS_SKIPPED = {"test_needs_cuda", "test_needs_an_optional_module_that_is_no_extra", "test_skipif_marker",
                 "test_expected_failure"}


def _outcomes(tmp_path: Path, ci: str | None) -> tuple[dict[str, str], str]:
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")  # not the repository's settings
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    if ci is not None:
        env["CI"] = ci
    xml = tmp_path / f"report_{ci}.xml"
    out = subprocess.run([sys.executable, "-m", "pytest", "-p", "skip_policy", "-p", "no:cacheprovider", "-rs",
                          f"--junitxml={xml}", "test_sample.py"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=120)
    outcomes: dict[str, str] = {}
    for case in ET.parse(xml).getroot().iter("testcase"):
        kinds = {child.tag for child in case}
        outcomes[case.get("name", "")] = ("failed" if kinds & {"failure", "error"} else
                                          "skipped" if "skipped" in kinds else "passed")
    return outcomes, out.stdout


@pytest.mark.parametrize("ci", ["true", "1"])
def test_on_ci_missing_shared_or_extras_fail_and_other_skips_stay(tmp_path: Path, ci: str) -> None:
    outcomes, stdout = _outcomes(tmp_path, ci)
    assert {name for name, o in outcomes.items() if o == "failed"} == NEEDS_CI_RESOURCE, stdout
    assert {name for name, o in outcomes.items() if o == "skipped"} == STAYS_SKIPPED, stdout
    assert outcomes["test_passes"] == "passed"
    assert "skipped on CI, which always has ../shared: /nowhere/shared/reference not present" in stdout
    assert "skipped on CI, which always has the extra's module onnxruntime: could not import 'onnxruntime'" in stdout


def test_conftest_registers_the_hook() -> None:
    import conftest
    import skip_policy

    assert conftest.pytest_runtest_makereport is skip_policy.pytest_runtest_makereport


@pytest.mark.parametrize("ci", [None, "", "false", "0"])
def test_off_ci_every_skip_stays_a_skip_and_shows_its_reason(tmp_path: Path, ci: str | None) -> None:
    outcomes, stdout = _outcomes(tmp_path, ci)
    assert {name for name, o in outcomes.items() if o == "skipped"} == NEEDS_CI_RESOURCE | STAYS_SKIPPED, stdout
    assert "only the developers' machines have ../shared" in stdout  # -rs shows why
