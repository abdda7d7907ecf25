"""Models other tools downloaded: Ollama, LM Studio, Hugging Face and llama.cpp stores laid out as each tool
writes them (real GGUF and SafeTensors files), read by the registry, cached, and never written to."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import minerva.discovery.llamacpp as llamacpp_store
import minerva.discovery.ollama as ollama_store
import minerva.registry as registry_module
from minerva.discovery import DISCOVERY_STORES, StoreLocation, discover, store_locations, store_module
from minerva.discovery.layout import gguf_sets
from minerva.registry import ModelRegistry
from minerva.settings import Settings
from tests.model_fixtures import CHATML_TEMPLATE, GGUFSpec, write_gguf, write_hf_directory
from tests.safetensors_models import smollm2_safetensors_dir  # noqa: F401 - a session fixture
from tests.store_layouts import (OLLAMA_LAYER, hf_directory_files, hf_repo, link_or_copy, llamacpp_download,
                                 ollama_blob, ollama_model, sha256_file)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def smollm2_sha256(smollm2_path) -> str:
    """The real digest of the SmolLM2 GGUF, as Ollama and the hub name its blob."""
    return sha256_file(smollm2_path)


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory) -> Path:
    """A second, different real GGUF (a tiny llama with a chat template)."""
    return write_gguf(tmp_path_factory.mktemp("tiny") / "tiny-Q8_0.gguf", GGUFSpec(chat_template=CHATML_TEMPLATE))


def registry_of(store: str, root: Path, **kwargs) -> ModelRegistry:
    return ModelRegistry(discovery=[StoreLocation(store, root)], **kwargs)


def tree_state(root: Path) -> dict[str, tuple]:
    """Every path under a store with its kind, size, mtime, mode and link target: to prove nothing changed."""
    state = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        state[str(path.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns,
                                              os.readlink(path) if path.is_symlink() else None)
    return state


# --------------------------------------------------------------------------- Ollama


def test_ollama_manifest_is_listed_under_ollamas_name_with_its_layers(tmp_path, smollm2_path, smollm2_sha256,
                                                                        tiny_gguf):
    root = tmp_path / "ollama"
    params = {"stop": ["<|im_end|>"], "temperature": 0.2}
    ollama_model(root, "qwen2.5-coder:7b", smollm2_path, smollm2_sha256, params=params, system="Be brief.",
                 template="{{ if .System }}{{ .System }}{{ end }}{{ .Prompt }}")
    ollama_model(root, "qwen2.5-coder:latest", smollm2_path, smollm2_sha256)  # the same blob: one model
    tiny_sha = sha256_file(tiny_gguf)
    ollama_model(root, "SmolLM2-GGUF:Q8_0", tiny_gguf, tiny_sha, registry="hf.co", namespace="bartowski", template=None)
    ollama_model(root, "custom:v1", tiny_gguf, tiny_sha, namespace="me", template=None)
    before = tree_state(root)

    registry = registry_of("ollama", root)
    models = {m.id: m for m in registry.list()}
    assert set(models) == {"qwen2.5-coder:7b", "hf.co/bartowski/SmolLM2-GGUF:Q8_0"}, registry.failures()
    coder = models["qwen2.5-coder:7b"]
    assert coder.source == "ollama" and coder.engine == "llamacpp"
    assert coder.info.path == root / "blobs" / f"sha256-{smollm2_sha256}"
    assert coder.info.architecture == "llama" and coder.info.quantization == "Q4_1" and coder.info.has_chat_template
    found = coder.discovered
    assert found.aliases == ("qwen2.5-coder:latest",)
    assert found.origin == root / "manifests" / "registry.ollama.ai" / "library" / "qwen2.5-coder" / "7b"
    assert json.loads(found.fact("params")) == params
    assert found.fact("system") == "Be brief." and found.fact("template").startswith("{{ if .System }}")
    assert found.fact("model_digest") == f"sha256:{smollm2_sha256}" and found.fact("family") == "llama"
    # the same tiny blob under two names: the shorter-sorting one is the id, the other an alias
    assert models["hf.co/bartowski/SmolLM2-GGUF:Q8_0"].discovered.aliases == ("me/custom:v1",)
    assert registry.failures() == {}
    assert tree_state(root) == before


def test_ollama_partial_missing_and_damaged_downloads_are_skipped_with_the_reason(tmp_path, smollm2_path,
                                                                                  smollm2_sha256):
    root = tmp_path / "ollama"
    ollama_model(root, "good:1b", smollm2_path, smollm2_sha256)
    pulling = "b" * 64
    ollama_model(root, "pulling:7b", smollm2_path, pulling, link_blob=False)
    (root / "blobs" / f"sha256-{pulling}-partial").write_bytes(b"GGUF" + b"\0" * 100)
    (root / "blobs" / f"sha256-{pulling}-partial-0").write_text('{"N": 0, "Offset": 0, "Size": 104}')
    orphan = "c" * 64
    (root / "blobs" / f"sha256-{orphan}-partial").write_bytes(b"GGUF")
    ollama_model(root, "gone:3b", smollm2_path, "d" * 64, link_blob=False)
    short = root / "blobs" / f"sha256-{'e' * 64}"
    short.write_bytes(smollm2_path.read_bytes()[:4096])
    ollama_model(root, "short:1b", smollm2_path, "e" * 64, link_blob=False)
    adapter = ollama_blob(root, b"lora")
    ollama_model(root, "tuned:1b", smollm2_path, smollm2_sha256, extra_layers=({"mediaType": OLLAMA_LAYER + "adapter",
                                                                                **adapter},))
    broken = root / "manifests" / "registry.ollama.ai" / "library" / "broken" / "latest"
    broken.parent.mkdir(parents=True)
    broken.write_text("{not json")

    registry = registry_of("ollama", root)
    assert [m.id for m in registry.list()] == ["good:1b"]
    reasons = registry.failures()
    assert "a partial download" in reasons[root / "blobs" / f"sha256-{pulling}"]
    assert "pulling:7b" in reasons[root / "blobs" / f"sha256-{pulling}"]
    assert "unfinished Ollama download" in reasons[root / "blobs" / f"sha256-{orphan}-partial"]
    assert not any(path.name.endswith("-partial-0") for path in reasons)  # chunk bookkeeping, not a download
    assert "is missing" in reasons[root / "blobs" / f"sha256-{'d' * 64}"]
    assert "4096 bytes" in reasons[short] and "incomplete or damaged" in reasons[short]
    assert "LoRA adapter" in reasons[root / "manifests" / "registry.ollama.ai" / "library" / "tuned" / "1b"]
    assert "not valid JSON" in reasons[broken]


def test_ollama_names_are_shown_as_ollama_shows_them():
    assert ollama_store.display_name("registry.ollama.ai", "library", "llama3.2", "3b") == "llama3.2:3b"
    assert ollama_store.display_name("registry.ollama.ai", "jmorgan", "m", "latest") == "jmorgan/m:latest"
    assert ollama_store.display_name("hf.co", "bartowski", "Qwen-GGUF", "Q4_K_M") == "hf.co/bartowski/Qwen-GGUF:Q4_K_M"
    assert ollama_store.blob_name("sha256:" + "0" * 64) == "sha256-" + "0" * 64
    assert ollama_store.blob_name("sha256:../../etc/passwd") is None


# --------------------------------------------------------------------------- Hugging Face hub cache


def test_hf_cache_snapshots_are_read_through_their_symlinks_and_refs_main(tmp_path, smollm2_path, smollm2_sha256,
                                                                         tiny_gguf, smollm2_safetensors_dir):
    hub = tmp_path / "hub"
    one = hf_repo(hub, "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF", {"smollm2-135m-instruct-q4_1.gguf": smollm2_path},
                  digests={smollm2_path: smollm2_sha256})
    # an older revision of the same repository: refs/main names the newer one, which is read
    hf_repo(hub, "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF", {"old-q8_0.gguf": tiny_gguf}, commit="0" * 40, ref=False)
    os.utime(one.parent / ("0" * 40), ns=(1, 2**62))  # newer on disk, still not the ref
    several = hf_repo(hub, "bartowski/SmolLM2-GGUF", {"SmolLM2-Q4_1.gguf": smollm2_path, "SmolLM2-Q8_0.gguf": tiny_gguf,
                                                      "mmproj-SmolLM2-f16.gguf": tiny_gguf, "README.md": b"# hi"},
                      digests={smollm2_path: smollm2_sha256})
    directory = hf_repo(hub, "HuggingFaceTB/SmolLM2-135M-Instruct", hf_directory_files(smollm2_safetensors_dir))
    (hub / "datasets--someone--data").mkdir()
    before = tree_state(hub)

    registry = registry_of("huggingface", hub)
    models = {m.id: m for m in registry.list()}
    assert set(models) == {"HuggingFaceTB/SmolLM2-135M-Instruct-GGUF", "bartowski/SmolLM2-GGUF:SmolLM2-Q4_1",
                           "bartowski/SmolLM2-GGUF:SmolLM2-Q8_0", "HuggingFaceTB/SmolLM2-135M-Instruct"}, \
        registry.failures()
    gguf = models["HuggingFaceTB/SmolLM2-135M-Instruct-GGUF"]
    assert gguf.info.path == one / "smollm2-135m-instruct-q4_1.gguf" and gguf.info.path.is_symlink()
    assert os.path.realpath(gguf.info.path) == str(one.parents[1] / "blobs" / smollm2_sha256)
    assert gguf.info.quantization == "Q4_1" and gguf.discovered.fact("revision") == "a" * 40
    assert models["bartowski/SmolLM2-GGUF:SmolLM2-Q8_0"].info.path == several / "SmolLM2-Q8_0.gguf"
    st = models["HuggingFaceTB/SmolLM2-135M-Instruct"]
    assert st.info.format == "safetensors" and st.engine == "transformers" and st.info.path == directory
    assert st.info.has_chat_template and st.info.architecture == "llama"
    assert registry.failures() == {}
    assert tree_state(hub) == before


def test_hf_snapshot_missing_a_shard_or_blob_is_skipped_with_the_reason(tmp_path, smollm2_path, smollm2_sha256):
    sharded = write_hf_directory(tmp_path / "sharded", shards=2)
    hub = tmp_path / "hub"
    files = hf_directory_files(sharded)
    del files["model-00002-of-00002.safetensors"]
    snapshot = hf_repo(hub, "org/sharded", files)
    (snapshot.parents[1] / "blobs" / "f00d.incomplete").write_bytes(b"half")
    dangling = hf_repo(hub, "org/dangling-GGUF", {"model-Q4_1.gguf": smollm2_path}, digests={smollm2_path: smollm2_sha256})
    os.unlink(dangling.parents[1] / "blobs" / smollm2_sha256)
    pending = hub / "models--org--pending"
    (pending / "blobs").mkdir(parents=True)
    (pending / "blobs" / "abc.incomplete").write_bytes(b"x")
    split = hf_repo(hub, "org/split-GGUF", {"big-00001-of-00002.gguf": smollm2_path},
                    digests={smollm2_path: smollm2_sha256})

    registry = registry_of("huggingface", hub)
    assert registry.list() == []
    reasons = registry.failures()
    assert "model-00002-of-00002.safetensors listed in model.safetensors.index.json is missing" in reasons[snapshot]
    assert "download in progress" in reasons[snapshot]
    assert "dangling symlink" in reasons[dangling / "model-Q4_1.gguf"]
    assert "partial download" in reasons[pending / "blobs" / "abc.incomplete"]
    assert "big-00002-of-00002.gguf is missing" in reasons[split / "big-00001-of-00002.gguf"]


# --------------------------------------------------------------------------- LM Studio and llama.cpp


def test_lmstudio_models_folder(tmp_path, smollm2_path, tiny_gguf):
    root = tmp_path / "lmstudio"
    repo = root / "lmstudio-community" / "SmolLM2-135M-Instruct-GGUF"
    link_or_copy(smollm2_path, repo / "SmolLM2-135M-Instruct-Q4_1.gguf")
    link_or_copy(tiny_gguf, repo / "mmproj-SmolLM2-f16.gguf")
    link_or_copy(tiny_gguf, root / "me" / "split" / "tiny-00001-of-00002.gguf")
    (root / "me" / "linked").mkdir(parents=True)
    (root / "me" / "linked" / "gone.gguf").symlink_to(tmp_path / "deleted.gguf")
    link_or_copy(tiny_gguf, root / "stray.gguf")  # not publisher/repo/file: LM Studio does not list it either
    before = tree_state(root)

    registry = registry_of("lmstudio", root)
    models = {m.id: m for m in registry.list()}
    assert set(models) == {"lmstudio-community/SmolLM2-135M-Instruct-GGUF/SmolLM2-135M-Instruct-Q4_1"}
    assert models["lmstudio-community/SmolLM2-135M-Instruct-GGUF/SmolLM2-135M-Instruct-Q4_1"].info.quantization == "Q4_1"
    reasons = registry.failures()
    assert "tiny-00002-of-00002.gguf is missing" in reasons[root / "me" / "split" / "tiny-00001-of-00002.gguf"]
    assert "dangling symlink" in reasons[root / "me" / "linked" / "gone.gguf"]
    assert tree_state(root) == before


def test_llamacpp_cache_flat_files_manifests_and_hub_layout(tmp_path, smollm2_path, smollm2_sha256, tiny_gguf):
    cache = tmp_path / "llama.cpp"
    cache.mkdir()
    llamacpp_download(cache, "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF", "smollm2-135m-instruct-q4_1.gguf",
                      smollm2_path, tag="Q4_1")
    llamacpp_download(cache, "ggml-org/tiny-GGUF", "tiny-Q8_0.gguf", tiny_gguf, tag=None)  # `-mu`: no manifest
    (cache / "org_big-GGUF_big-Q4_K_M.gguf.downloadInProgress").write_bytes(b"GGUF")
    (cache / "manifest=org=big-GGUF=Q4_K_M.json").write_text(json.dumps({"ggufFile": {"rfilename": "big-Q4_K_M.gguf"}}))
    hf_repo(cache, "ggml-org/hub-GGUF", {"hub-Q4_1.gguf": smollm2_path}, digests={smollm2_path: smollm2_sha256})
    before = tree_state(cache)

    registry = registry_of("llamacpp", cache)
    models = {m.id: m for m in registry.list()}
    assert set(models) == {"HuggingFaceTB/SmolLM2-135M-Instruct-GGUF:Q4_1", "ggml-org_tiny-GGUF_tiny-Q8_0",
                           "ggml-org/hub-GGUF"}, registry.failures()
    named = models["HuggingFaceTB/SmolLM2-135M-Instruct-GGUF:Q4_1"]
    assert named.info.path.name == "HuggingFaceTB_SmolLM2-135M-Instruct-GGUF_smollm2-135m-instruct-q4_1.gguf"
    assert named.discovered.aliases == ("HuggingFaceTB_SmolLM2-135M-Instruct-GGUF_smollm2-135m-instruct-q4_1",)
    assert all(m.source == "llamacpp" for m in models.values())
    reasons = registry.failures()
    assert reasons == {cache / "org_big-GGUF_big-Q4_K_M.gguf.downloadInProgress":
                       "llamacpp org/big-GGUF:Q4_K_M: a partial download: org_big-GGUF_big-Q4_K_M.gguf.downloadInProgress"}
    assert tree_state(cache) == before


def test_gguf_sets_count_a_split_model_once_and_leave_projectors_out():
    sets = gguf_sets(["a-00001-of-00002.gguf", "a-00002-of-00002.gguf", "mmproj-a.gguf", "b.GGUF", "notes.txt",
                      "Q4/c-00002-of-00003.gguf"])
    assert [(s.stem, s.first, s.missing) for s in sets] == [
        ("Q4/c", "Q4/c-00001-of-00003.gguf", ("Q4/c-00001-of-00003.gguf", "Q4/c-00003-of-00003.gguf")),
        ("a", "a-00001-of-00002.gguf", ()), ("b", "b.GGUF", ())]


# --------------------------------------------------------------------------- unreadable files


UNREADABLE_PROBE = """
import json, sys
from pathlib import Path
from minerva.discovery import StoreLocation
from minerva.registry import ModelRegistry
locations = [StoreLocation(store, Path(root)) for store, root in json.loads(sys.argv[1])]
registry = ModelRegistry(discovery=locations)
print(json.dumps({"ids": [m.id for m in registry.list()],
                  "failures": {str(p): r for p, r in registry.failures().items()}}))
"""


def test_unreadable_files_are_skipped_with_the_reason(tmp_path, smollm2_path, smollm2_sha256, tiny_gguf):
    """chmod 000 files; root reads those anyway, so as root the scan runs with CAP_DAC_OVERRIDE and
    CAP_DAC_READ_SEARCH dropped (setpriv), which makes the permission bits bind root too."""
    ollama = tmp_path / "ollama"
    ollama_model(ollama, "good:1b", smollm2_path, smollm2_sha256)
    locked_manifest = ollama_model(ollama, "locked:1b", tiny_gguf, sha256_file(tiny_gguf))
    lmstudio = tmp_path / "lmstudio"
    locked_gguf = lmstudio / "me" / "locked" / "locked.gguf"
    locked_gguf.parent.mkdir(parents=True)
    shutil.copyfile(tiny_gguf, locked_gguf)  # its own inode: chmod must not touch the shared fixture
    hub = tmp_path / "hub"
    snapshot = hf_repo(hub, "org/locked", hf_directory_files(write_hf_directory(tmp_path / "st", shards=2)))
    locked_index = Path(os.path.realpath(snapshot / "model.safetensors.index.json"))
    for path in (locked_manifest, locked_gguf, locked_index):
        path.chmod(0)
    command = [sys.executable, "-c", UNREADABLE_PROBE,
               json.dumps([["ollama", str(ollama)], ["lmstudio", str(lmstudio)], ["huggingface", str(hub)]])]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: chmod 000 cannot make a file unreadable to root")
        drop = "-dac_override,-dac_read_search"
        command = ["setpriv", f"--inh-caps={drop}", f"--bounding-set={drop}", *command]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    probe = json.loads(result.stdout)
    assert probe["ids"] == ["good:1b"]
    failures = probe["failures"]
    assert "Permission denied" in failures[str(locked_manifest)] and "locked:1b" in failures[str(locked_manifest)]
    assert "unreadable" in failures[str(locked_gguf)]
    index_reason = failures[str(snapshot / "model.safetensors.index.json")]
    assert "model.safetensors.index.json is unreadable" in index_reason and "org/locked" in index_reason


# --------------------------------------------------------------------------- caching and dedup


def test_a_warm_listing_rereads_nothing_until_the_store_changes(tmp_path, smollm2_path, smollm2_sha256, tiny_gguf,
                                                                monkeypatch):
    root = tmp_path / "ollama"
    manifest = ollama_model(root, "smol:135m", smollm2_path, smollm2_sha256)
    scans, reads = [], []
    real_discover, real_read = ollama_store.discover, registry_module.read_model_info
    monkeypatch.setattr(ollama_store, "discover", lambda r: scans.append(r) or real_discover(r))
    monkeypatch.setattr(registry_module, "read_model_info", lambda p: reads.append(p) or real_read(p))
    registry = registry_of("ollama", root)
    first = registry.list()
    version = registry.version
    for _ in range(5):
        assert registry.list() == first
    assert len(scans) == 1 and len(reads) == 1 and registry.version == version

    ollama_model(root, "tiny:1b", tiny_gguf, sha256_file(tiny_gguf))  # a pull adds a model folder
    assert [m.id for m in registry.list()] == ["smol:135m", "tiny:1b"]
    assert len(scans) == 2 and len(reads) == 2
    data = json.loads(manifest.read_text())  # a re-pull rewrites a manifest in place
    data["layers"] = [layer for layer in data["layers"] if layer["mediaType"] != OLLAMA_LAYER + "template"]
    written = manifest.stat().st_mtime_ns
    with open(manifest, "r+") as file:
        file.write(json.dumps(data))
        file.truncate()
    if manifest.stat().st_mtime_ns == written:  # rewritten within one tick of the clock: as if a moment later
        os.utime(manifest, ns=(written, written + 1_000_000))
    assert registry.get("smol:135m").discovered.fact("template") is None
    assert len(scans) >= 3 and len(reads) == 2  # the blob did not change: its header is not read again


def test_a_10000_file_store_lists_correctly_and_stays_cached(tmp_path, smollm2_path, tiny_gguf, monkeypatch):
    cache = tmp_path / "llama.cpp"
    cache.mkdir()
    for i in range(9_994):
        (cache / f"org_repo_file-{i:05d}.gguf.etag").write_text('"x"')
    llamacpp_download(cache, "org/a-GGUF", "a-Q4_1.gguf", smollm2_path)
    llamacpp_download(cache, "org/b-GGUF", "b-Q8_0.gguf", tiny_gguf)
    (cache / "org_c-GGUF_c.gguf.downloadInProgress").write_bytes(b"GGUF")
    assert len(os.listdir(cache)) == 10_001
    scans = []
    real = llamacpp_store.discover
    monkeypatch.setattr(llamacpp_store, "discover", lambda r: scans.append(r) or real(r))
    registry = registry_of("llamacpp", cache)
    assert [m.id for m in registry.list()] == ["org/a-GGUF:latest", "org/b-GGUF:latest"]
    assert list(registry.failures().values()) == ["llamacpp org_c-GGUF_c: a partial download: "
                                                  "org_c-GGUF_c.gguf.downloadInProgress"]
    for _ in range(3):
        registry.list()
    assert len(scans) == 1
    (cache / "org_c-GGUF_c.gguf.downloadInProgress").unlink()  # the download finished
    link_or_copy(tiny_gguf, cache / "org_c-GGUF_c.gguf")
    assert [m.id for m in registry.list()] == ["org/a-GGUF:latest", "org/b-GGUF:latest", "org_c-GGUF_c"]
    assert registry.failures() == {} and len(scans) == 2


def test_a_file_registered_another_way_keeps_its_first_id(tmp_path, smollm2_path, smollm2_sha256):
    hub = tmp_path / "hub"
    snapshot = hf_repo(hub, "org/smol-GGUF", {"smol-Q4_1.gguf": smollm2_path}, digests={smollm2_path: smollm2_sha256})
    blob = Path(os.path.realpath(snapshot / "smol-Q4_1.gguf"))
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    (models_dir / "mine.gguf").symlink_to(blob)  # the user linked the blob into their own folder
    ollama = tmp_path / "ollama"
    ollama_model(ollama, "smol:latest", smollm2_path, smollm2_sha256)
    explicit = ollama / "blobs" / f"sha256-{smollm2_sha256}"
    stores = [StoreLocation("ollama", ollama), StoreLocation("huggingface", hub)]
    registry = ModelRegistry([models_dir], {"pinned": explicit}, discovery=stores)
    assert sorted((m.id, m.source) for m in registry.list()) == [("mine", "dir"), ("pinned", "explicit")]
    # with nothing else registered, the first store to find a file names it (LLAMA_CACHE set to the hub cache)
    both = ModelRegistry(discovery=[StoreLocation("huggingface", hub), StoreLocation("llamacpp", hub)])
    assert [(m.id, m.source) for m in both.list()] == [("org/smol-GGUF", "huggingface")]


# --------------------------------------------------------------------------- settings and locations


def test_settings_choose_the_stores_and_where_they_live(monkeypatch, tmp_path):
    monkeypatch.delenv("MINERVA_DISCOVER_PATHS", raising=False)
    assert Settings().discover == list(DISCOVERY_STORES) and Settings().discover_paths == {}
    monkeypatch.setenv("MINERVA_DISCOVER", "ollama,huggingface")
    assert Settings().discover == ["ollama", "huggingface"]
    monkeypatch.setenv("MINERVA_DISCOVER", "")
    assert Settings().discover == []
    monkeypatch.setenv("MINERVA_DISCOVER", "ollama,docker")
    with pytest.raises(ValueError, match="docker"):
        Settings()
    monkeypatch.delenv("MINERVA_DISCOVER")
    monkeypatch.setenv("MINERVA_DISCOVER_PATHS", json.dumps({"ollama": [str(tmp_path)]}))
    assert Settings().discover_paths == {"ollama": [tmp_path]}

    home = Path("/home/u")
    defaults = store_locations(DISCOVERY_STORES, {}, {}, home)
    assert [(loc.store, str(loc.root)) for loc in defaults] == [
        ("ollama", "/home/u/.ollama/models"), ("ollama", "/usr/share/ollama/.ollama/models"),
        ("lmstudio", "/home/u/.lmstudio/models"), ("lmstudio", "/home/u/.cache/lm-studio/models"),
        ("huggingface", "/home/u/.cache/huggingface/hub"), ("llamacpp", "/home/u/.cache/llama.cpp")]
    env = {"OLLAMA_MODELS": "/data/ollama", "HF_HOME": "/data/hf", "LLAMA_CACHE": "/data/llama"}
    chosen = store_locations(["llamacpp", "ollama", "huggingface"], {"huggingface": [Path("/x")]}, env, home)
    assert [(loc.store, str(loc.root)) for loc in chosen] == [
        ("ollama", "/data/ollama"), ("huggingface", "/x"), ("llamacpp", "/data/llama")]
    assert store_module("huggingface").default_roots({"HF_HOME": "/data/hf"}, home) == (Path("/data/hf/hub"),)
    assert store_module("huggingface").default_roots({"HF_HUB_CACHE": "/c", "HF_HOME": "/h"}, home) == (Path("/c"),)
    assert all(store_module(store).STORE == store for store in DISCOVERY_STORES)


def test_the_suite_never_reads_the_machines_stores():
    from minerva.api.app import build_registry

    registry = build_registry(Settings())
    locations = registry.store_locations
    assert {loc.store for loc in locations} == set(DISCOVERY_STORES)
    roots = {loc.root for loc in locations}
    assert len(roots) == 1 and not any(next(iter(roots)).iterdir())
    assert all(discover(loc).found == () for loc in locations)


# --------------------------------------------------------------------------- the CLI and a server


def test_minerva_models_and_inspect_say_where_a_model_was_found(tmp_path, smollm2_path, smollm2_sha256):
    ollama = tmp_path / "ollama"
    ollama_model(ollama, "qwen2.5-coder:7b", smollm2_path, smollm2_sha256)
    ollama_model(ollama, "pulling:1b", smollm2_path, "b" * 64, link_blob=False)
    (ollama / "blobs" / f"sha256-{'b' * 64}-partial").write_bytes(b"GGUF")
    config = tmp_path / "minerva.toml"
    config.write_text(f'discover = ["ollama"]\nmodels_dirs = ["{tmp_path / "none"}"]\n\n'
                      f'[discover_paths]\nollama = ["{ollama}"]\n')
    env = {k: v for k, v in os.environ.items() if k != "MINERVA_DISCOVER_PATHS"}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "minerva.cli", "--log-level", "error", *args, "--config",
                               str(config), "--no-default-model"], capture_output=True, text=True, timeout=120,
                              cwd=ROOT, env=env)

    table = run("models")
    assert table.returncode == 0, table.stderr
    assert "qwen2.5-coder:7b" in table.stdout and "ollama" in table.stdout
    assert "skipped" in table.stdout and "pulling:1b:" in table.stdout and "partial" in table.stdout
    inspected = run("inspect", "qwen2.5-coder:7b", "--json")
    assert inspected.returncode == 0, inspected.stderr
    data = json.loads(inspected.stdout)
    assert data["id"] == "qwen2.5-coder:7b" and data["source"] == "ollama" and data["found_by"] == "ollama"
    assert data["found_at"].endswith("manifests/registry.ollama.ai/library/qwen2.5-coder/7b")
    assert data["chat_template_used"].startswith("the GGUF's own") and "not Jinja" in data["chat_template_used"]
    assert data["ollama_template"] == "{{ .Prompt }}"
    by_path = run("inspect", str(ollama / "blobs" / f"sha256-{smollm2_sha256}"))
    assert by_path.returncode == 0 and "qwen2.5-coder:7b" in by_path.stdout and "found_at" in by_path.stdout


def test_a_server_serves_an_ollama_model_under_its_ollama_name(tmp_path, smollm2_path, smollm2_sha256):
    import openai

    from tests.servers import running_server

    ollama = tmp_path / "ollama"
    ollama_model(ollama, "qwen2.5-coder:7b", smollm2_path, smollm2_sha256)
    before = tree_state(ollama)
    settings = Settings(models_dirs=[tmp_path / "none"], include_default_model=False, discover=["ollama"],
                        discover_paths={"ollama": [ollama]}, n_threads=2, n_slots=1, n_ctx=1024)
    with running_server(settings) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0, timeout=120)
        assert [m.id for m in client.models.list()] == ["qwen2.5-coder:7b"]
        reply = client.chat.completions.create(model="qwen2.5-coder:7b", max_tokens=8, temperature=0,
                                               messages=[{"role": "user", "content": "Say hello."}])
        assert reply.model == "qwen2.5-coder:7b" and reply.choices[0].message.content
        assert reply.usage.completion_tokens > 0
    assert tree_state(ollama) == before


def test_discovery_reads_only_the_layers_below_it():
    """Store readers are pure functions over files: they may use formats and core, never the registry, an
    engine, generation or an API."""
    from tests.test_layers import PACKAGE, imported_modules

    allowed = ("minerva.discovery", "minerva.formats", "minerva.core")
    imports = {str(path.relative_to(PACKAGE)): sorted(name for name in imported_modules(path)
                                                      if name.startswith("minerva") and not name.startswith(allowed))
               for path in (PACKAGE / "discovery").rglob("*.py")}
    assert len(imports) >= 8 and {k: v for k, v in imports.items() if v} == {}
