"""`minerva jobs`: fine-tuning jobs read from the data directory's store, as a table or a live progress bar."""

from __future__ import annotations

import datetime
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from minerva.core.errors import NotFoundError
from minerva.finetune.store import DB_NAME, FineTuneStore, Job, JobEvent

WATCH_POLL_S = 1.0


def open_store(data_dir: Path) -> FineTuneStore | None:
    """The store under data_dir, or None when no job was ever created there."""
    return FineTuneStore(data_dir) if (Path(data_dir) / DB_NAME).exists() else None


def _when(timestamp: int | None) -> str:
    return datetime.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S") if timestamp else "-"


def jobs_table(jobs: list[Job]) -> Table:
    """Jobs as a table, newest first."""
    table = Table(title=f"{len(jobs)} fine-tuning job(s)")
    for column in ("id", "status", "base", "fine-tuned model", "created", "tokens"):
        table.add_column(column, justify="right" if column == "tokens" else "left", no_wrap=True)
    for job in jobs:
        error = job.get("error") or {}
        status = job.status if not error else f"{job.status}: {error.get('code')}"
        cells = (job.id, status, job.get("model") or "-", job.get("fine_tuned_model") or "-", _when(job.created_at),
                 f"{job.get('trained_tokens') or 0:,}")
        table.add_row(*(Text(cell) for cell in cells))  # Text: ids such as ft:x:... are not markup or emoji
    return table


def latest_metrics(store: FineTuneStore, job_id: str) -> JobEvent | None:
    """The newest metrics event of a job."""
    return next((e for e in store.list_events(job_id, limit=50).items if e.type == "metrics"), None)


def watch_job(store: FineTuneStore, job_id: str, console: Console, poll_s: float = WATCH_POLL_S) -> int:
    """Show a job's progress (step, loss) until it finishes; 0 when it succeeded, 1 otherwise."""
    job = store.get_job(job_id)
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} steps"),
                  TextColumn("{task.fields[loss]}"), TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task(f"{job.id} {job.status}", total=None, loss="")
        while True:
            job = store.get_job(job_id)
            event = latest_metrics(store, job_id)
            if event is not None and event.data:
                progress.update(task, completed=event.data["step"], total=event.data.get("total_steps"),
                                loss=f"loss={event.data['train_loss']:.3f}")
            progress.update(task, description=f"{job.id} {job.status}")
            if job.finished:
                break
            time.sleep(poll_s)
    if job.status == "succeeded":
        console.print(Text.assemble(("succeeded", "green"), f": {job.get('fine_tuned_model')}"))
        return 0
    error = job.get("error") or {}
    console.print(Text.assemble((job.status, "red"), f": {error.get('message')}" if error else ""))
    return 1


def run_jobs_command(data_dir: Path, watch: str | None, console: Console) -> int:
    """`minerva jobs [watch ID]`."""
    store = open_store(data_dir)
    if store is None:
        if watch:
            raise NotFoundError(f"No such fine-tuning job: {watch}")
        console.print(f"no fine-tuning jobs in {data_dir}")
        return 0
    try:
        if watch:
            return watch_job(store, watch, console)
        console.print(jobs_table(list(store.list_jobs(limit=100).items)))
        return 0
    finally:
        store.close()
