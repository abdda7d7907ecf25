"""The registry: ids, sources, collisions, live directory changes, caching and bad files."""

import os
import shutil
from pathlib import Path

import pytest

from minerva.core.errors import ModelNotFoundError
from minerva.registry import ModelRegistry, derive_model_id


def test_derived_ids():
    assert derive_model_id(Path("SmolLM2-135M-Instruct.Q4_1.gguf")) == "smollm2-135m-instruct.q4_1"
    assert derive_model_id(Path("Big-Model-00001-of-00003.gguf")) == "big-model"
    assert derive_model_id(Path("all-MiniLM-L6-v2")) == "all-minilm-l6-v2"
    assert derive_model_id(Path("tiny.safetensors")) == "tiny"


@pytest.fixture
def models_dir(tmp_path, smollm2_path):
    directory = tmp_path / "models"
    directory.mkdir()
    shutil.copy(smollm2_path, directory / "SmolLM2.gguf")
    return directory


def test_default_explicit_and_directory_sources(models_dir, smollm2_path, tmp_path):
    registry = ModelRegistry([models_dir], {"mine": smollm2_path}, default_model=smollm2_path)
    models = {m.id: m for m in registry.list()}
    # the same path registered twice (explicit and default) is served once, under the explicit id
    assert "mine" in models and models["mine"].source == "explicit"
    assert "smollm2-135m-instruct" not in models
    assert "smollm2" in models and models["smollm2"].source == "dir"
    assert registry.get("mine").info.quantization == "Q4_1"
    with pytest.raises(ModelNotFoundError):
        registry.get("nope")


def test_colliding_ids_are_distinct_and_deterministic(tmp_path, smollm2_path):
    first, second = tmp_path / "a", tmp_path / "b"
    for directory in (first, second):
        directory.mkdir()
        shutil.copy(smollm2_path, directory / "Same.gguf")
    ids = sorted(m.id for m in ModelRegistry([first, second]).list())
    again = sorted(m.id for m in ModelRegistry([first, second]).list())
    assert ids == again and len(ids) == 2 and "same" in ids
    assert ids[1].startswith("same-")


def test_added_and_removed_files_show_up_without_restart(models_dir, smollm2_path):
    registry = ModelRegistry([models_dir])
    assert [m.id for m in registry.list()] == ["smollm2"]
    shutil.copy(smollm2_path, models_dir / "Second.gguf")
    assert sorted(m.id for m in registry.list()) == ["second", "smollm2"]
    (models_dir / "Second.gguf").unlink()
    assert [m.id for m in registry.list()] == ["smollm2"]


def test_unchanged_files_are_not_reparsed(models_dir, monkeypatch):
    import minerva.registry as registry_module

    calls = []
    real = registry_module.read_model_info
    monkeypatch.setattr(registry_module, "read_model_info", lambda p: calls.append(p) or real(p))
    registry = ModelRegistry([models_dir])
    registry.list()
    registry.list()
    registry.get("smollm2")
    assert len(calls) == 1
    os.utime(models_dir / "SmolLM2.gguf", ns=(1, 10**15))
    registry.list()
    assert len(calls) == 2


def test_corrupt_file_is_skipped_and_reported_once(models_dir, caplog):
    (models_dir / "broken.gguf").write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 20)
    (models_dir / "notes.txt").write_text("not a model")
    registry = ModelRegistry([models_dir])
    with caplog.at_level("WARNING"):
        assert [m.id for m in registry.list()] == ["smollm2"]
        registry.list()
    assert sum("broken.gguf" in r.getMessage() for r in caplog.records) == 1
    assert any(p.name == "broken.gguf" for p in registry.failures())


def test_missing_directory_is_not_an_error(tmp_path):
    assert ModelRegistry([tmp_path / "does-not-exist"]).list() == []
