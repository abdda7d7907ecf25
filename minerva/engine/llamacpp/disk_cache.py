"""KV cells of long prompts kept on disk across restarts: the entry file format, the index of one cache
directory and its writer thread (no llama here: cells arrive and leave as bytes).

Layout: `<root>/<key digest>/<token digest>.kv`, one directory per model file and KV layout (CacheKey),
one file per cached prompt. A file is

    magic (8 bytes) | meta length (u32) | meta (JSON: format, key, n_tokens, state_bytes, state_crc)
    | tokens (n_tokens x i32) | crc32 of everything before (u32) | state (the llama sequence state)

all little-endian. The head (everything before the state) is read to rebuild the index after a restart;
the state's checksum is verified when it is read back. A file that fails either check is removed.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import hashlib
import json
import logging
import os
import struct
import threading
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from minerva.engine.prefix import common_prefix_length, longest_shared_prefix

logger = logging.getLogger(__name__)

MIN_DISK_TOKENS = 512  # a prompt shorter than this (or adding fewer tokens to what is on disk) is not written
# Reading a cached file back and checking it took about 6x loading the same state from host memory
# (SmolLM2, 2,048 tokens, 47 MB: read 24 ms + crc32 13 ms, vs set_data 6 ms), still ~500x less than
# computing those tokens; worth_restoring weighs a disk entry's tokens by this factor.
DISK_READ_COST = 8
PENDING_LIMIT_BYTES = 512 * 2**20  # states waiting for the writer; past this a new one is not written
IDENTITY_HEAD_BYTES = 4 * 2**20  # how much of a file its identity hashes

SUFFIX = ".kv"
_TEMP_SUFFIX = ".tmp"
_MAGIC = b"MNVKV\x00\x00\x01"
_FORMAT = 1
_HEAD = struct.Struct("<8sI")
_CRC = struct.Struct("<I")
_MAX_META_BYTES = 1 << 16
_MAX_TOKENS = 1 << 24

StateBuffer = bytes | bytearray | memoryview | ctypes.Array  # a llama sequence state


class CorruptEntry(Exception):
    """A cache file that is torn, truncated, altered, or written under another key."""


def file_identity(path: Path) -> dict[str, object]:
    """What identifies a file's contents: its resolved path, size, mtime and a hash of its first MiBs."""
    resolved = Path(path).resolve()
    stat = resolved.stat()
    with resolved.open("rb") as f:
        head = hashlib.sha256(f.read(IDENTITY_HEAD_BYTES)).hexdigest()
    return {"path": str(resolved), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "head_sha256": head}


@dataclass(frozen=True)
class CacheKey:
    """What cached cells were computed under (model files, KV layout settings, llama.cpp build), as canonical JSON."""

    text: str

    @classmethod
    def of(cls, values: Mapping[str, object]) -> CacheKey:
        """The key of these values (order-independent)."""
        return cls(json.dumps(values, sort_keys=True, separators=(",", ":"), default=str))

    @property
    def digest(self) -> str:
        """A short hash of the key: the name of its cache directory."""
        return hashlib.sha256(self.text.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class EntryHead:
    """An entry file's head: its key, the tokens whose cells it holds, and the state's size and checksum."""

    key: str
    tokens: tuple[int, ...]
    state_bytes: int
    state_crc: int
    state_offset: int  # where the state starts in the file


def entry_name(tokens: Sequence[int]) -> str:
    """The file name of the entry holding these tokens."""
    return hashlib.sha256(struct.pack(f"<{len(tokens)}i", *tokens)).hexdigest()[:32] + SUFFIX


def encode_head(key: CacheKey, tokens: Sequence[int], state_bytes: int, state_crc: int) -> bytes:
    """The head of an entry file, its own checksum included."""
    meta = json.dumps({"format": _FORMAT, "key": key.text, "n_tokens": len(tokens), "state_bytes": state_bytes,
                       "state_crc": state_crc}, separators=(",", ":")).encode()
    body = _HEAD.pack(_MAGIC, len(meta)) + meta + struct.pack(f"<{len(tokens)}i", *tokens)
    return body + _CRC.pack(zlib.crc32(body))


def _read_exactly(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise CorruptEntry("truncated head")
    return data


def read_head(f: BinaryIO, key: CacheKey) -> EntryHead:
    """Read and check an entry's head from the start of `f`; CorruptEntry when it is damaged or another key's."""
    start = _read_exactly(f, _HEAD.size)
    magic, meta_len = _HEAD.unpack(start)
    if magic != _MAGIC or meta_len > _MAX_META_BYTES:
        raise CorruptEntry("not a prompt cache file")
    meta_raw = _read_exactly(f, meta_len)
    try:
        meta = json.loads(meta_raw)
        n_tokens, state_bytes, state_crc = int(meta["n_tokens"]), int(meta["state_bytes"]), int(meta["state_crc"])
        entry_key, entry_format = meta["key"], meta["format"]
    except (ValueError, TypeError, KeyError) as exc:
        raise CorruptEntry(f"unreadable meta: {exc}") from exc
    if not 0 < n_tokens <= _MAX_TOKENS or state_bytes <= 0:
        raise CorruptEntry("implausible sizes")
    tokens_raw = _read_exactly(f, 4 * n_tokens)
    (crc,) = _CRC.unpack(_read_exactly(f, _CRC.size))
    if zlib.crc32(start + meta_raw + tokens_raw) != crc:
        raise CorruptEntry("head checksum mismatch")
    if entry_format != _FORMAT or entry_key != key.text:
        raise CorruptEntry("written under another model file or setting")
    tokens = struct.unpack(f"<{n_tokens}i", tokens_raw)
    return EntryHead(entry_key, tokens, state_bytes, state_crc, _HEAD.size + meta_len + 4 * n_tokens + _CRC.size)


def _fsync_directory(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_entry(path: Path, key: CacheKey, tokens: Sequence[int], state: StateBuffer) -> int:
    """Write one entry atomically (temp file, fsync, rename, fsync of the directory); the file's size."""
    view = memoryview(state).cast("B")
    head = encode_head(key, tokens, len(view), zlib.crc32(view))
    temp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}{_TEMP_SUFFIX}")
    try:
        with open(temp, "wb") as f:
            f.write(head)
            f.write(view)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    _fsync_directory(path.parent)
    return len(head) + len(view)


def read_entry(path: Path, key: CacheKey) -> tuple[EntryHead, bytearray]:
    """An entry's head and state, both checked; CorruptEntry when anything is off, OSError when unreadable."""
    with open(path, "rb") as f:
        head = read_head(f, key)
        state = bytearray(head.state_bytes)
        if f.readinto(state) != head.state_bytes or f.read(1):
            raise CorruptEntry("state truncated or followed by extra bytes")
    if zlib.crc32(state) != head.state_crc:
        raise CorruptEntry("state checksum mismatch")
    return head, state


@dataclass(frozen=True, eq=False)
class DiskPrompt:
    """One entry file: the tokens its cells hold, and its size on disk."""

    tokens: tuple[int, ...]
    path: Path
    size: int


@dataclass(frozen=True, eq=False)
class _Write:
    tokens: tuple[int, ...]
    state: StateBuffer

    @property
    def size(self) -> int:
        return memoryview(self.state).nbytes


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


class DiskPrompts:
    """The entries of one cache directory (one model file and KV layout) and the thread that writes them.

    The scheduler thread asks `best`, `read`s the chosen file (a plain read of a local file) and hands
    states to `submit`, which never waits on the disk: the writer thread writes them, adds them to the
    index, and removes the least recently used files under the whole cache root (every model's
    directory, so stale ones age out) until it fits `budget_bytes`. Nothing is created on disk before
    the first write.
    """

    def __init__(self, root: Path, key: CacheKey, budget_bytes: int, *, min_tokens: int = MIN_DISK_TOKENS,
                 pending_limit_bytes: int = PENDING_LIMIT_BYTES):
        self.root = Path(root)
        self.key = key
        self.directory = self.root / key.digest
        self.budget_bytes = max(0, budget_bytes)
        self.min_tokens = max(1, min_tokens)
        self._pending_limit = pending_limit_bytes
        # looked up per instance, so a test can hold the writer by patching write_entry
        self._write_file: Callable[[Path, CacheKey, Sequence[int], StateBuffer], int] = write_entry
        self._cond = threading.Condition()
        self._entries: list[DiskPrompt] = []  # least recently used first
        self._pending: collections.deque[_Write] = collections.deque()
        self._pending_bytes = 0
        self._writing: _Write | None = None
        self._closed = False
        self._thread: threading.Thread | None = None
        self._last_stamp = 0
        self._scan()

    def __len__(self) -> int:
        with self._cond:
            return len(self._entries)

    @property
    def bytes_held(self) -> int:
        """Bytes of this directory's entry files."""
        with self._cond:
            return sum(e.size for e in self._entries)

    def best(self, prompt: Sequence[int]) -> tuple[DiskPrompt | None, int]:
        """The entry sharing the longest prefix with `prompt`, and that length."""
        with self._cond:
            return longest_shared_prefix(self._entries, prompt)

    def wants(self, tokens: Sequence[int]) -> bool:
        """Whether writing cells of `tokens` adds at least min_tokens to what is on disk or on its way there."""
        if self.budget_bytes <= 0 or len(tokens) < self.min_tokens:
            return False
        with self._cond:
            if self._closed:
                return False
            known = [*self._entries, *self._pending, *([self._writing] if self._writing else [])]
        _, shared = longest_shared_prefix(known, tokens)
        return len(tokens) - shared >= self.min_tokens

    def submit(self, tokens: Sequence[int], state: StateBuffer) -> bool:
        """Queue the cells of `tokens` for the writer (never waits); False when they are not wanted or do not fit."""
        job = _Write(tuple(tokens), state)
        if job.size >= self.budget_bytes or not self.wants(job.tokens):
            return False
        with self._cond:
            if self._pending_bytes and self._pending_bytes + job.size > self._pending_limit:
                logger.debug("prompt cache writer is behind (%d bytes waiting); not writing %d tokens",
                             self._pending_bytes, len(job.tokens))
                return False
            self._pending.append(job)
            self._pending_bytes += job.size
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="minerva-prompt-cache-writer", daemon=True)
                self._thread.start()
            self._cond.notify_all()
        return True

    def read(self, entry: DiskPrompt) -> bytearray | None:
        """The checked state of an entry; None (and the file removed) when it is damaged or gone."""
        try:
            head, state = read_entry(entry.path, self.key)
            if head.tokens != entry.tokens:
                raise CorruptEntry("tokens differ from the index")
        except (CorruptEntry, OSError) as exc:
            logger.warning("prompt cache file %s is not usable (%s); removing it", entry.path.name, exc)
            self._drop([entry])
            return None
        with self._cond:
            if entry in self._entries:
                self._entries.remove(entry)
                self._entries.append(entry)
        self._stamp(entry.path)
        return state

    def close(self, timeout_s: float | None = 120.0) -> None:
        """Stop taking writes and wait for the queued ones to be written."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)
            if thread.is_alive():
                logger.warning("prompt cache writer still busy at close; its last file is abandoned")

    # ---- index --------------------------------------------------------------------------------

    def _scan(self) -> None:
        """Rebuild the index from the entry heads in the directory, removing damaged and half-written files."""
        found: list[tuple[int, DiskPrompt]] = []
        try:
            names = sorted(os.listdir(self.directory))
        except FileNotFoundError:
            return
        except OSError as exc:
            logger.warning("prompt cache directory %s is not readable: %s", self.directory, exc)
            return
        for name in names:
            path = self.directory / name
            if name.endswith(_TEMP_SUFFIX):
                _remove(path)  # a write cut short by a crash
                continue
            if not name.endswith(SUFFIX):
                continue
            try:
                with open(path, "rb") as f:
                    head = read_head(f, self.key)
                    size = os.fstat(f.fileno()).st_size
                    mtime = os.fstat(f.fileno()).st_mtime_ns
                if size != head.state_offset + head.state_bytes:
                    raise CorruptEntry("file size does not match its head")
            except (CorruptEntry, OSError) as exc:
                logger.warning("prompt cache file %s is not usable (%s); removing it", name, exc)
                _remove(path)
                continue
            found.append((mtime, DiskPrompt(head.tokens, path, size)))
        found.sort(key=lambda item: item[0])
        with self._cond:
            self._entries = [entry for _, entry in found]
        if found:
            logger.info("prompt cache: %d prompt(s) on disk for this model and settings", len(found))

    def _stamp(self, path: Path) -> None:
        """Set a file's mtime to now: its last use, which orders eviction across models and restarts.

        Explicit and strictly increasing: the kernel's own timestamps can be a few ms coarse.
        """
        with self._cond:
            self._last_stamp = max(time.time_ns(), self._last_stamp + 1)
            stamp = self._last_stamp
        with contextlib.suppress(OSError):
            os.utime(path, ns=(stamp, stamp))

    def _drop(self, entries: Sequence[DiskPrompt]) -> None:
        with self._cond:
            self._entries = [e for e in self._entries if e not in entries]
        for entry in entries:
            _remove(entry.path)

    # ---- writer thread ------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if not self._pending:
                    return
                job = self._writing = self._pending.popleft()
            try:
                self._store(job)
            except Exception as exc:  # a full or read-only disk must not stop serving
                logger.warning("could not write %d tokens to the prompt cache: %s", len(job.tokens), exc)
            finally:
                with self._cond:
                    self._writing = None
                    self._pending_bytes -= job.size

    def _store(self, job: _Write) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / entry_name(job.tokens)
        size = self._write_file(path, self.key, job.tokens, job.state)
        self._stamp(path)
        new = DiskPrompt(job.tokens, path, size)
        with self._cond:
            # entries the new one holds all but fewer than min_tokens of are superseded
            covered = [e for e in self._entries if e.path == path
                       or len(e.tokens) - common_prefix_length(e.tokens, new.tokens) < self.min_tokens]
            self._entries = [e for e in self._entries if e not in covered]
            self._entries.append(new)
        for entry in covered:
            if entry.path != path:
                _remove(entry.path)
        logger.debug("wrote %d tokens to the prompt cache (%d bytes)", len(job.tokens), size)
        self._evict()

    def _evict(self) -> None:
        """Remove the least recently used entry files under the root until they fit the budget."""
        files: list[tuple[int, int, Path]] = []
        with contextlib.suppress(OSError):
            for directory in self.root.iterdir():
                if not directory.is_dir():
                    continue
                for path in directory.glob(f"*{SUFFIX}"):
                    with contextlib.suppress(OSError):
                        stat = path.stat()
                        files.append((stat.st_mtime_ns, stat.st_size, path))
        files.sort()
        total = sum(size for _, size, _ in files)
        removed: set[Path] = set()
        for _, size, path in files:
            if total <= self.budget_bytes:
                break
            _remove(path)
            removed.add(path)
            total -= size
        if removed:
            with self._cond:
                self._entries = [e for e in self._entries if e.path not in removed]
            for directory in {p.parent for p in removed} - {self.directory}:
                with contextlib.suppress(OSError):
                    directory.rmdir()  # only when empty
            logger.debug("prompt cache: removed %d least recently used file(s) to fit its budget", len(removed))
