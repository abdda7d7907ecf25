"""The fine-tuning store: files, jobs, events and checkpoints in one SQLite database, file bytes beside it."""

from __future__ import annotations

import io
import json
import secrets
import shutil
import sqlite3
import string
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from minerva.core.errors import MinervaError, NotFoundError
from minerva.finetune.atomic import atomic_file

DB_NAME = "finetune.sqlite3"
DISK_HEADROOM_BYTES = 64 * 1024 * 1024  # kept free on the data volume after any upload
COPY_CHUNK_BYTES = 1024 * 1024
FINISHED_STATUSES = ("succeeded", "failed", "cancelled")
ALPHANUMERIC = string.ascii_letters + string.digits

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, bytes INTEGER NOT NULL,
  created_at INTEGER NOT NULL, filename TEXT NOT NULL, purpose TEXT NOT NULL, status TEXT NOT NULL,
  status_details TEXT);
CREATE TABLE IF NOT EXISTS jobs (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, created_at INTEGER NOT NULL,
  status TEXT NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, job_id TEXT NOT NULL,
  created_at INTEGER NOT NULL, level TEXT NOT NULL, message TEXT NOT NULL, type TEXT NOT NULL, data TEXT);
CREATE INDEX IF NOT EXISTS events_by_job ON events (job_id, seq);
CREATE TABLE IF NOT EXISTS checkpoints (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, job_id TEXT NOT NULL,
  created_at INTEGER NOT NULL, step INTEGER NOT NULL, model_id TEXT NOT NULL, path TEXT NOT NULL,
  metrics TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS checkpoints_by_job ON checkpoints (job_id, seq);
"""


class InsufficientStorageError(MinervaError):
    """The data directory's volume has no room for what would be written (507)."""

    status_code = 507
    code = "insufficient_storage"


def new_id(prefix: str, length: int = 24) -> str:
    """A random OpenAI-style id: prefix + alphanumerics."""
    return prefix + "".join(secrets.choice(ALPHANUMERIC) for _ in range(length))


def now() -> int:
    """Unix seconds, as OpenAI's created_at fields are."""
    return int(time.time())


def ensure_free_space(directory: Path, needed: int) -> None:
    """InsufficientStorageError unless `needed` bytes fit on the volume with headroom to spare."""
    free = shutil.disk_usage(directory).free
    if needed + DISK_HEADROOM_BYTES > free:
        raise InsufficientStorageError(
            f"Not enough disk space in the data directory: {needed} bytes needed, {free} free "
            f"(keeping {DISK_HEADROOM_BYTES} free).")


@dataclass(frozen=True)
class StoredFile:
    """An uploaded (or job-written) file: the OpenAI FileObject fields."""

    id: str
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: str
    status_details: str | None = None


@dataclass(frozen=True)
class Job:
    """A fine-tuning job as stored; `fields` holds the OpenAI job body beyond id/created_at/status."""

    id: str
    created_at: int
    status: str
    fields: Mapping[str, Any] = field(default_factory=dict)

    def get(self, name: str, default: Any = None) -> Any:
        """One stored field of the job body."""
        return self.fields.get(name, default)

    @property
    def finished(self) -> bool:
        """Whether the job reached a final status."""
        return self.status in FINISHED_STATUSES


@dataclass(frozen=True)
class JobEvent:
    """One entry of a job's event log."""

    id: str
    job_id: str
    created_at: int
    level: str
    message: str
    type: str = "message"
    data: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Checkpoint:
    """An adapter saved at a step of a job, servable as its own model."""

    id: str
    job_id: str
    created_at: int
    step: int
    model_id: str
    path: str
    metrics: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Page:
    """One page of a list: the items and whether more follow."""

    items: tuple
    has_more: bool


class FineTuneStore:
    """Files, jobs, events and checkpoints under one data directory; safe to call from several threads."""

    def __init__(self, data_dir: Path):
        self.data_dir = Path(data_dir)
        self.files_dir = self.data_dir / "files"
        self.jobs_dir = self.data_dir / "jobs"
        for directory in (self.data_dir, self.files_dir, self.jobs_dir):
            directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.data_dir / DB_NAME, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    def _rows(self, sql: str, args: Iterable[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, tuple(args)).fetchall()

    def _execute(self, sql: str, args: Iterable[Any] = ()) -> None:
        with self._lock:
            self._db.execute(sql, tuple(args))

    def _page(self, table: str, where: str, args: list[Any], after: str | None, limit: int,
              ascending: bool = False) -> tuple[list[sqlite3.Row], bool]:
        if after is not None:
            anchor = self._rows(f"SELECT seq FROM {table} WHERE id = ?", [after])
            if anchor:
                where += f" AND seq {'>' if ascending else '<'} ?"
                args = [*args, anchor[0]["seq"]]
        order = "ASC" if ascending else "DESC"
        rows = self._rows(f"SELECT * FROM {table} WHERE {where} ORDER BY seq {order} LIMIT ?", [*args, limit + 1])
        return rows[:limit], len(rows) > limit

    # files

    def file_path(self, file_id: str) -> Path:
        """Where a file's bytes live."""
        return self.files_dir / file_id

    def add_file(self, filename: str, purpose: str, data: bytes, status: str = "processed") -> StoredFile:
        """Store bytes as a new file (space checked first, written atomically)."""
        return self.add_file_from(filename, purpose, io.BytesIO(data), len(data), status)

    def add_file_from(self, filename: str, purpose: str, source: BinaryIO, size: int,
                      status: str = "processed") -> StoredFile:
        """Store `size` bytes read from `source` as a new file, copied in chunks (space checked first, atomic)."""
        ensure_free_space(self.data_dir, size)
        stored = StoredFile(new_id("file-"), size, now(), filename, purpose, status)
        with atomic_file(self.file_path(stored.id)) as out:
            shutil.copyfileobj(source, out, COPY_CHUNK_BYTES)
        self._execute("INSERT INTO files (id, bytes, created_at, filename, purpose, status, status_details) "
                      "VALUES (?, ?, ?, ?, ?, ?, ?)", [stored.id, stored.bytes, stored.created_at, stored.filename,
                                                       stored.purpose, stored.status, stored.status_details])
        return stored

    def get_file(self, file_id: str) -> StoredFile:
        """The file with this id, or NotFoundError."""
        rows = self._rows("SELECT * FROM files WHERE id = ?", [file_id])
        if not rows:
            raise NotFoundError(f"No such File object: {file_id}", param="file_id")
        return _file_of(rows[0])

    def list_files(self, after: str | None = None, limit: int = 10000, order: str = "desc",
                   purpose: str | None = None) -> Page:
        """Files newest first (or oldest first with order=asc), optionally of one purpose."""
        where, args = ("purpose = ?", [purpose]) if purpose else ("1 = 1", [])
        rows, more = self._page("files", where, args, after, limit, ascending=order == "asc")
        return Page(tuple(_file_of(r) for r in rows), more)

    def read_file(self, file_id: str) -> bytes:
        """A file's bytes (NotFoundError when it has none)."""
        self.get_file(file_id)
        return self.file_path(file_id).read_bytes()

    def delete_file(self, file_id: str) -> None:
        """Remove a file's row and bytes."""
        self.get_file(file_id)
        self._execute("DELETE FROM files WHERE id = ?", [file_id])
        self.file_path(file_id).unlink(missing_ok=True)

    # jobs

    def job_dir(self, job_id: str) -> Path:
        """A job's work directory (checkpoints, the final adapter, results)."""
        return self.jobs_dir / job_id

    def add_job(self, fields: Mapping[str, Any], status: str = "validating_files") -> Job:
        """Store a new job with a fresh id."""
        job = Job(new_id("ftjob-"), now(), status, dict(fields))
        self._execute("INSERT INTO jobs (id, created_at, status, body) VALUES (?, ?, ?, ?)",
                      [job.id, job.created_at, job.status, json.dumps(job.fields)])
        return job

    def get_job(self, job_id: str) -> Job:
        """The job with this id, or NotFoundError."""
        rows = self._rows("SELECT * FROM jobs WHERE id = ?", [job_id])
        if not rows:
            raise NotFoundError(f"No such fine-tuning job: {job_id}", param="fine_tuning_job_id")
        return _job_of(rows[0])

    def update_job(self, job_id: str, status: str | None = None, **fields: Any) -> Job:
        """Change a job's status and/or body fields; the updated job."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM jobs WHERE id = ?", [job_id]).fetchall()
            if not rows:
                raise NotFoundError(f"No such fine-tuning job: {job_id}", param="fine_tuning_job_id")
            job = _job_of(rows[0])
            job = Job(job.id, job.created_at, status or job.status, {**job.fields, **fields})
            self._db.execute("UPDATE jobs SET status = ?, body = ? WHERE id = ?",
                             [job.status, json.dumps(job.fields), job.id])
        return job

    def list_jobs(self, after: str | None = None, limit: int = 20, metadata: Mapping[str, str] | None = None) -> Page:
        """Jobs newest first, optionally only those whose metadata has every given key/value."""
        if not metadata:
            rows, more = self._page("jobs", "1 = 1", [], after, limit)
            return Page(tuple(_job_of(r) for r in rows), more)
        matching = [job for job in (_job_of(r) for r in self._rows("SELECT * FROM jobs ORDER BY seq DESC"))
                    if all((job.get("metadata") or {}).get(k) == v for k, v in metadata.items())]
        if after is not None:
            ids = [job.id for job in matching]
            matching = matching[ids.index(after) + 1:] if after in ids else matching
        return Page(tuple(matching[:limit]), len(matching) > limit)

    def jobs_with_status(self, *statuses: str) -> list[Job]:
        """Every job in one of these statuses, oldest first."""
        marks = ", ".join("?" for _ in statuses)
        return [_job_of(r) for r in self._rows(f"SELECT * FROM jobs WHERE status IN ({marks}) ORDER BY seq", statuses)]

    def job_counts(self) -> dict[str, tuple[int, int]]:
        """Per status: (jobs, tokens trained by them)."""
        rows = self._rows("SELECT status, COUNT(*) AS n, SUM(COALESCE(json_extract(body, '$.trained_tokens'), 0)) "
                          "AS tokens FROM jobs GROUP BY status")
        return {row["status"]: (row["n"], int(row["tokens"] or 0)) for row in rows}

    # events

    def add_event(self, job_id: str, message: str, level: str = "info", type: str = "message",
                  data: Mapping[str, Any] | None = None) -> JobEvent:
        """Append an event to a job's log."""
        event = JobEvent(new_id("ftevent-"), job_id, now(), level, message, type, dict(data) if data else None)
        self._execute("INSERT INTO events (id, job_id, created_at, level, message, type, data) "
                      "VALUES (?, ?, ?, ?, ?, ?, ?)", [event.id, job_id, event.created_at, level, message, type,
                                                       json.dumps(event.data) if event.data else None])
        return event

    def list_events(self, job_id: str, after: str | None = None, limit: int = 20) -> Page:
        """A job's events, newest first; `after` pages on to older ones."""
        rows, more = self._page("events", "job_id = ?", [job_id], after, limit)
        return Page(tuple(_event_of(r) for r in rows), more)

    # checkpoints

    def add_checkpoint(self, job_id: str, step: int, model_id: str, path: Path,
                       metrics: Mapping[str, Any]) -> Checkpoint:
        """Record a saved adapter checkpoint of a job."""
        checkpoint = Checkpoint(new_id("ftckpt_"), job_id, now(), step, model_id, str(path), dict(metrics))
        self._execute("INSERT INTO checkpoints (id, job_id, created_at, step, model_id, path, metrics) "
                      "VALUES (?, ?, ?, ?, ?, ?, ?)", [checkpoint.id, job_id, checkpoint.created_at, step, model_id,
                                                       checkpoint.path, json.dumps(checkpoint.metrics)])
        return checkpoint

    def list_checkpoints(self, job_id: str, after: str | None = None, limit: int = 10) -> Page:
        """A job's checkpoints, newest first."""
        rows, more = self._page("checkpoints", "job_id = ?", [job_id], after, limit)
        return Page(tuple(_checkpoint_of(r) for r in rows), more)

    def update_checkpoint_path(self, checkpoint_id: str, path: Path) -> None:
        """Point a checkpoint at its servable adapter (e.g. the GGUF written from its PEFT directory)."""
        self._execute("UPDATE checkpoints SET path = ? WHERE id = ?", [str(path), checkpoint_id])

    def delete_checkpoint(self, checkpoint_id: str) -> None:
        """Forget a checkpoint (its adapter files are the caller's)."""
        self._execute("DELETE FROM checkpoints WHERE id = ?", [checkpoint_id])


def _file_of(row: sqlite3.Row) -> StoredFile:
    return StoredFile(row["id"], row["bytes"], row["created_at"], row["filename"], row["purpose"], row["status"],
                      row["status_details"])


def _job_of(row: sqlite3.Row) -> Job:
    return Job(row["id"], row["created_at"], row["status"], json.loads(row["body"]))


def _event_of(row: sqlite3.Row) -> JobEvent:
    return JobEvent(row["id"], row["job_id"], row["created_at"], row["level"], row["message"], row["type"],
                    json.loads(row["data"]) if row["data"] else None)


def _checkpoint_of(row: sqlite3.Row) -> Checkpoint:
    return Checkpoint(row["id"], row["job_id"], row["created_at"], row["step"], row["model_id"], row["path"],
                      json.loads(row["metrics"]))
