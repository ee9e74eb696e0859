"""On CI, a test that skips for want of ``../shared`` or of an installed extra fails instead.

A plain clone skips the tests that need the oracle files in ``../shared`` or an optional package
(onnx/onnxruntime/onnxscript, cityscapesscripts, matplotlib, tensorboard), and says why (``-rs``).
CI always has both, so there such a skip means something is broken (a moved file, an extra that
failed to install) and would otherwise hide every test behind it. When the environment variable
``CI`` is set (CI services set ``CI=true``), :func:`pytest_runtest_makereport` turns those skips into
failures. Every other skip stays a skip: CUDA tests on a machine without a GPU, the ``/proc`` check,
a zoo model without a loss oracle.

tests/conftest.py registers the hook; tests/test_skip_policy.py runs it on a small test file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Generator
from typing import Any

import pytest

#: What tests/conftest.py's ``reference_dir`` / ``camvid_root`` fixtures say when ``../shared`` is absent.
SHARED_SKIP = "only the developers' machines have ../shared"

#: Top-level modules of the optional extras (pyproject.toml's [export], [cityscapes], [plot], [tb], [fastpng]).
EXTRA_MODULES = frozenset({"onnx", "onnxruntime", "onnxscript", "cityscapesscripts", "matplotlib", "tensorboard",
                           "pyspng"})

# pytest.importorskip's reason: "could not import 'onnxruntime': No module named 'onnxruntime'".
_IMPORT_SKIP = re.compile(r"could not import '([\w.]+)'")


def on_ci() -> bool:
    """Whether this run is CI's: ``CI`` set to anything but empty, ``0`` or ``false``."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def needs_ci_resource(reason: str) -> str | None:
    """What CI always has that a skip with ``reason`` lacked (``../shared`` or an extra's module), else None."""
    if SHARED_SKIP in reason:
        return "../shared"
    match = _IMPORT_SKIP.search(reason)
    if match and match.group(1).split(".")[0] in EXTRA_MODULES:
        return f"the extra's module {match.group(1).split('.')[0]}"
    return None


def skip_reason(report: pytest.TestReport) -> str:
    """The reason a skipped report gives, as ``-rs`` shows it."""
    longrepr: Any = report.longrepr
    text = str(longrepr[2]) if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return text.removeprefix("Skipped: ")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if not report.skipped or hasattr(report, "wasxfail") or not on_ci():
        return
    reason = skip_reason(report)
    missing = needs_ci_resource(reason)
    if missing is not None:
        report.outcome = "failed"
        report.longrepr = (f"skipped on CI, which always has {missing}: {reason} "
                           "(CI is set; a skip here hides a broken setup)")
