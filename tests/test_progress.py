"""Progress output: plain lines in a log, nothing when disabled or on ranks other than 0."""

from __future__ import annotations

import pytest

from segdistill.progress import progress_bar


def test_plain_lines_when_stderr_is_not_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    with progress_bar(4, "eval", unit="img", interval=0.0) as bar:
        for _ in range(4):
            bar.update(1)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 4 and "\r" not in err
    assert lines[-1].startswith("eval: 100%") and "4/4" in lines[-1]


def test_a_line_at_most_every_interval_and_always_at_the_end(capsys: pytest.CaptureFixture[str]) -> None:
    with progress_bar(100, "predict", interval=3600.0) as bar:
        for _ in range(100):
            bar.update(1)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "100/100" in lines[0]


@pytest.mark.parametrize("how", ["disabled", "rank1"])
def test_nothing_when_disabled_or_not_rank_0(how: str, capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    if how == "rank1":
        monkeypatch.setenv("RANK", "1")
    with progress_bar(3, "eval", interval=0.0, enabled=how != "disabled") as bar:
        for _ in range(3):
            bar.update(1)
    assert capsys.readouterr().err == ""
