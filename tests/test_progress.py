"""Progress without a terminal: plain lines a Prefect stage log (via DVC) can show."""
from qelm_core.progress import LineProgress, progress_bar


def test_without_a_terminal_progress_is_one_line_per_tenth(capsys):
    with progress_bar() as bar:  # pytest's captured stderr is not a terminal
        assert isinstance(bar, LineProgress)
        task = bar.add_task("train", total=50, completed=5)
        for _ in range(45):
            bar.advance(task)
        shards = bar.add_task("teacher shards", total=3)
        bar.advance(shards, 3)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "train: 5/50" and lines[-3] == "train: 50/50"
    assert len([ln for ln in lines if ln.startswith("train:")]) == 10  # tenths 1..10 (it resumed at 5)
    assert lines[-1] == "teacher shards: 3/3" and "teacher shards: 0/3" in lines
