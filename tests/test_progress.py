"""Progress off a terminal: one line per finished phase (ddbench/progress.py)."""
import io

from rich.console import Console

from ddbench.progress import PhaseLines, progress_bar


def test_phase_lines_print_one_line_per_phase_with_its_count():
    out = io.StringIO()
    lines = PhaseLines(Console(file=out, width=200))
    assert list(lines.track(range(3), description="dc convnet3", total=3)) == [0, 1, 2]
    assert list(lines.track(iter("ab"), description="teacher convnet3")) == ["a", "b"]
    text = out.getvalue().splitlines()
    assert len(text) == 2
    assert text[0].startswith("dc convnet3: 3/3 in ") and text[0].endswith("s")
    assert text[1].startswith("teacher convnet3: 2/2 in ")


def test_progress_bar_off_a_terminal_is_phase_lines(monkeypatch):
    monkeypatch.delenv("DDBENCH_NO_PROGRESS", raising=False)
    with progress_bar() as progress:  # pytest captures stderr: not a terminal
        assert isinstance(progress, PhaseLines)
        assert hasattr(progress.console, "print")
