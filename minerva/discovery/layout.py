"""GGUF file names as models: a split set counts once, multimodal projectors are not models."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

GGUF_SUFFIX = ".gguf"
SPLIT_NAME = re.compile(r"^(?P<base>.+)-(?P<number>\d{5})-of-(?P<count>\d{5})(?P<ext>\.gguf)$", re.IGNORECASE)


@dataclass(frozen=True)
class GGUFSet:
    """One model among GGUF file names (relative paths with '/'): the file read first, and absent parts."""

    stem: str  # the name without .gguf and the split suffix (with its folder, when in one)
    first: str  # the file minerva reads: the file itself, or part 1 of a split set
    parts: tuple[str, ...]  # every file of the model (just `first` when it is not split)
    missing: tuple[str, ...] = ()  # split parts the set names that are not present


def is_projector(name: str) -> bool:
    """Whether a GGUF is a multimodal projector (mmproj), which goes with a model and is not one."""
    return "mmproj" in name.rsplit("/", 1)[-1].lower()


def is_gguf_name(name: str) -> bool:
    """Whether a file name ends in .gguf (any case)."""
    return name.lower().endswith(GGUF_SUFFIX)


def gguf_sets(names: Iterable[str]) -> list[GGUFSet]:
    """The models among file names: plain GGUFs and split sets (by their first part), no projectors."""
    present = set(names)
    sets: dict[str, GGUFSet] = {}
    for name in sorted(present):
        if not is_gguf_name(name) or is_projector(name):
            continue
        folder, _, base_name = name.rpartition("/")
        prefix = f"{folder}/" if folder else ""
        match = SPLIT_NAME.match(base_name)
        if match is None or int(match["count"]) < 1:
            sets[name] = GGUFSet(name[: -len(GGUF_SUFFIX)], name, (name,))
            continue
        count = int(match["count"])
        parts = tuple(f"{prefix}{match['base']}-{n:05d}-of-{match['count']}{match['ext']}" for n in range(1, count + 1))
        if parts[0] not in sets:
            sets[parts[0]] = GGUFSet(prefix + match["base"], parts[0], parts, tuple(p for p in parts if p not in present))
    return sorted(sets.values(), key=lambda s: s.stem)
