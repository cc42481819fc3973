"""One progress style for every stage: a rich bar on a terminal; elsewhere (DVC under a Prefect task,
CI, a log file) one plain line per tenth of the work, so a flow run's stage log shows how far it is."""
from __future__ import annotations

import sys
import threading

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class LineProgress:
    """The part of rich's Progress the stages use, printing `<description>: <done>/<total>` lines."""

    def __init__(self, steps: int = 10):
        self.steps, self.tasks, self.lock = steps, {}, threading.Lock()

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc) -> None:
        return None

    def add_task(self, description: str, total: float | None = None, completed: float = 0, **_) -> int:
        with self.lock:
            task_id = len(self.tasks)
            self.tasks[task_id] = {"description": description, "total": total or 0, "done": completed, "shown": -1}
        self.advance(task_id, 0)
        return task_id

    def advance(self, task_id: int, advance: float = 1) -> None:
        with self.lock:
            task = self.tasks[task_id]
            task["done"] += advance
            step = int(self.steps * task["done"] / task["total"]) if task["total"] else 0
            if step > task["shown"]:
                task["shown"] = step
                # the whole line in one write, so worker processes' lines cannot land inside it (distill.eval_line)
                sys.stderr.write(f"{task['description']}: {task['done']:g}/{task['total']:g}\n")
                sys.stderr.flush()


def progress_bar() -> Progress | LineProgress:
    if not sys.stderr.isatty():
        return LineProgress()
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), transient=False)
