"""Models other tools downloaded: one module per store, each a pure function of a root directory.

Every store module exposes ``discover(root) -> StoreScan`` and ``default_roots(env, home)``; the
registry below names them. Nothing under a store is ever written or moved.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from minerva.discovery.scan import DiscoveredModel, SkippedModel, StoreScan

DISCOVERY_STORES = ("ollama", "lmstudio", "huggingface", "llamacpp")
"""The stores minerva can read, by module name (minerva.discovery.<name>), in priority order."""

__all__ = ["DISCOVERY_STORES", "DiscoveredModel", "SkippedModel", "StoreLocation", "StoreScan", "discover",
           "store_locations", "store_module"]


@dataclass(frozen=True)
class StoreLocation:
    """One root directory of one store."""

    store: str
    root: Path


def store_module(store: str) -> ModuleType:
    """The module that reads a store (ValueError for a name not in DISCOVERY_STORES)."""
    if store not in DISCOVERY_STORES:
        raise ValueError(f"unknown discovery store {store!r}; known: {', '.join(DISCOVERY_STORES)}")
    return importlib.import_module(f"minerva.discovery.{store}")


def discover(location: StoreLocation) -> StoreScan:
    """Scan one store root."""
    return store_module(location.store).discover(location.root)


def store_locations(stores: Iterable[str], paths: Mapping[str, Iterable[Path]], env: Mapping[str, str],
                    home: Path) -> tuple[StoreLocation, ...]:
    """Where to look, store by store in DISCOVERY_STORES order: `paths[store]` when given, else its defaults."""
    wanted = set(stores)
    locations: list[StoreLocation] = []
    for store in DISCOVERY_STORES:
        if store not in wanted:
            continue
        roots = paths[store] if store in paths else store_module(store).default_roots(env, home)
        for root in roots:
            location = StoreLocation(store, Path(root).expanduser())
            if location not in locations:
                locations.append(location)
    return tuple(locations)
