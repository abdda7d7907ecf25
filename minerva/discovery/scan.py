"""What one scan of a store returns: the models found, those skipped with the reason, and what it read."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

Watch = tuple[str, int]
"""A path a scan depended on and its mtime in ns when the scan read it (0: it did not exist)."""


@dataclass(frozen=True)
class DiscoveredModel:
    """A model another tool downloaded: its id as that tool names it and the path minerva reads."""

    id: str
    path: Path  # a GGUF file (the first part of a split set) or a SafeTensors directory
    store: str  # the discovery store that found it ("ollama", "lmstudio", "huggingface", "llamacpp")
    origin: Path  # what the tool records the model by: a manifest, a snapshot directory, the file itself
    aliases: tuple[str, ...] = ()  # other names the tool gives the same file
    facts: tuple[tuple[str, str], ...] = ()  # store-specific facts (Ollama's template, params, system...)

    def fact(self, key: str) -> str | None:
        """The value of one fact, or None."""
        return next((value for name, value in self.facts if name == key), None)


@dataclass(frozen=True)
class SkippedModel:
    """Something a store holds that is not served, and why (a partial download, a dangling link...)."""

    name: str  # as the tool names it, else the file name
    path: Path
    store: str
    reason: str


@dataclass(frozen=True)
class StoreScan:
    """The result of scanning one store root."""

    found: tuple[DiscoveredModel, ...] = ()
    skipped: tuple[SkippedModel, ...] = ()
    watched: tuple[Watch, ...] = ()


def mtime_of(path: str | Path) -> int:
    """A path's mtime in ns, 0 when it does not exist or cannot be reached."""
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return 0


def unchanged(scan: StoreScan) -> bool:
    """Whether every path the scan read still has the mtime it had then."""
    return all(mtime_of(path) == mtime for path, mtime in scan.watched)


def access_problem(path: Path) -> str | None:
    """Why a file cannot be read (a dangling symlink, a permission, a loop), or None when it can."""
    try:
        os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            return f"a dangling symlink: its target {os.readlink(path)} is gone"
        return "missing"
    except OSError as exc:
        return f"unreadable: {exc.strerror or exc}"
    if not os.access(path, os.R_OK):
        return "unreadable: permission denied"
    return None


def first_access_problem(folder: Path, names: Iterable[str]) -> str | None:
    """The first of some files that cannot be read, named, with why; None when all can."""
    for name in names:
        problem = access_problem(folder / name)
        if problem:
            return f"{name} is {problem}"
    return None


class ScanBuilder:
    """Collects one store scan: found and skipped models, and every path read with its mtime."""

    def __init__(self, store: str):
        self.store = store
        self._found: list[DiscoveredModel] = []
        self._skipped: list[SkippedModel] = []
        self._watched: dict[str, int] = {}

    def watch(self, path: Path) -> int:
        """Record a path the result depends on (stat it before reading it); its mtime."""
        key = os.fspath(path)
        mtime = mtime_of(key)
        self._watched.setdefault(key, mtime)
        return mtime

    def entries(self, directory: Path, *, name: str | None = None) -> list[os.DirEntry] | None:
        """A directory's visible entries, sorted by name; None (and a skip) when it cannot be listed."""
        if not self.watch(directory):
            return None
        try:
            with os.scandir(directory) as listing:
                return sorted((e for e in listing if not e.name.startswith(".")), key=lambda e: e.name)
        except NotADirectoryError:
            return None
        except OSError as exc:
            self.skip(name or directory.name, directory, f"cannot list the directory: {exc.strerror or exc}")
            return None

    def read_text(self, path: Path, name: str, limit: int) -> str | None:
        """A small text file the result depends on; None (and a skip) when it cannot be read."""
        self.watch(path)
        try:
            with open(path, "rb") as file:
                data = file.read(limit + 1)
        except OSError as exc:
            self.skip(name, path, f"cannot read {path.name}: {exc.strerror or exc}")
            return None
        if len(data) > limit:
            self.skip(name, path, f"{path.name} is larger than {limit} bytes")
            return None
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            self.skip(name, path, f"{path.name} is not UTF-8 text")
            return None

    def found(self, model_id: str, path: Path, origin: Path, facts: tuple[tuple[str, str], ...] = (),
              aliases: tuple[str, ...] = ()) -> None:
        """Record a servable model."""
        self._found.append(DiscoveredModel(model_id, path, self.store, origin, aliases, facts))

    def skip(self, name: str, path: Path, reason: str) -> None:
        """Record something left out and why."""
        self._skipped.append(SkippedModel(name, path, self.store, reason))

    def merge(self, other: StoreScan) -> None:
        """Add another scan's results (a nested layout scanned by another store's function)."""
        self._found.extend(other.found)
        self._skipped.extend(other.skipped)
        for path, mtime in other.watched:
            self._watched.setdefault(path, mtime)

    def result(self) -> StoreScan:
        """The scan, models in id order."""
        return StoreScan(tuple(sorted(self._found, key=lambda m: (m.id, str(m.path)))),
                         tuple(sorted(self._skipped, key=lambda s: (s.name, str(s.path)))),
                         tuple(self._watched.items()))
