"""The engine pool's lifecycle rules: explicit load and unload, per-model keep-alive, the idle reaper."""

import asyncio
import time
from pathlib import Path

import pytest

from minerva.engine.pool import EnginePool
from minerva.formats.model_info import ModelInfo
from minerva.registry import RegisteredModel
from minerva.settings import Settings


class ClosableEngine:
    """Just enough engine for the pool: it only has to be closed."""

    def __init__(self):
        self.closed = False

    def close(self) -> None:
        self.closed = True


def model(model_id: str) -> RegisteredModel:
    path = Path(f"/models/{model_id}.gguf")
    info = ModelInfo(format="gguf", path=path, files=(path,), file_size_bytes=1000, tensor_count=1,
                     parameter_count=1000, quantization="Q4_1", architecture="llama", context_length=512,
                     kind="chat", name=model_id)
    return RegisteredModel(model_id, info, "dir", (1000, 1))


def pool_with(settings: Settings) -> tuple[EnginePool, list[ClosableEngine]]:
    engines: list[ClosableEngine] = []

    def loader(_model, _settings):
        engines.append(ClosableEngine())
        return engines[-1]

    return EnginePool(settings, loader), engines


def run(coro):
    return asyncio.run(coro)


def test_load_then_unload_closes_the_engine():
    pool, engines = pool_with(Settings(idle_ttl_s=0))

    async def scenario():
        await pool.load(model("a"))
        assert pool.is_loaded("a") and not engines[0].closed
        assert await pool.unload("a") is True
        assert not pool.is_loaded("a") and engines[0].closed
        assert await pool.unload("a") is False  # nothing left to unload

    run(scenario())


def test_a_model_in_use_is_not_unloaded():
    pool, engines = pool_with(Settings(idle_ttl_s=0))

    async def scenario():
        async with pool.use(model("a")):
            assert await pool.unload("a") is False
            assert await pool.unload_idle() == []
        assert pool.is_loaded("a")

    run(scenario())


def test_server_ttl_zero_never_expires_but_a_keep_alive_does():
    pool, _ = pool_with(Settings(idle_ttl_s=0))

    async def scenario():
        await pool.load(model("forever"))
        await pool.load(model("brief"), keep_alive_s=5)
        assert pool.expires_in("forever") is None
        assert 4 < pool.expires_in("brief") <= 5
        assert await pool.unload_idle(now=time.monotonic() + 4) == []
        assert await pool.unload_idle(now=time.monotonic() + 6) == ["brief"]
        assert pool.is_loaded("forever")

    run(scenario())


def test_keep_alive_zero_unloads_at_the_next_sweep_and_negative_never():
    pool, _ = pool_with(Settings(idle_ttl_s=10))

    async def scenario():
        await pool.load(model("a"))
        await pool.load(model("b"))
        pool.keep_alive(model("a"), 0)
        pool.keep_alive(model("b"), -1)
        assert pool.expires_in("a") == 0 and pool.expires_in("b") is None
        assert await pool.unload_idle(now=time.monotonic() + 3600) == ["a"]
        assert pool.is_loaded("b")

    run(scenario())


def test_the_server_ttl_applies_when_no_keep_alive_was_set():
    pool, _ = pool_with(Settings(idle_ttl_s=10))

    async def scenario():
        await pool.load(model("a"))
        assert 9 < pool.expires_in("a") <= 10
        assert await pool.unload_idle(now=time.monotonic() + 5) == []
        assert await pool.unload_idle(now=time.monotonic() + 11) == ["a"]

    run(scenario())


def test_unloading_an_unknown_model_does_nothing():
    pool, _ = pool_with(Settings())
    assert run(pool.unload("nobody")) is False
    assert pool.expires_in("nobody") is None


@pytest.mark.parametrize("keep", [None, 30.0])
def test_loading_twice_loads_once(keep):
    pool, engines = pool_with(Settings())

    async def scenario():
        await asyncio.gather(pool.load(model("a"), keep), pool.load(model("a"), keep))

    run(scenario())
    assert len(engines) == 1
