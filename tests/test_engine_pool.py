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


def test_the_host_prompt_cache_counts_in_a_gguf_models_memory():
    from minerva.engine.pool import estimate_memory_bytes

    with_cache = estimate_memory_bytes(model("a"), Settings(prompt_cache_mb=512, n_ctx=512))
    without = estimate_memory_bytes(model("a"), Settings(prompt_cache_mb=0, n_ctx=512))
    assert with_cache - without == 512 * 2**20


def budget_for_one() -> Settings:
    """A budget that holds one of the test models (with its KV cache) but not two."""
    from minerva.engine.pool import estimate_memory_bytes

    one = estimate_memory_bytes(model("a"), Settings(prompt_cache_mb=0, n_ctx=512))
    return Settings(prompt_cache_mb=0, n_ctx=512, memory_budget_mb=max(1, int(one * 1.5 / 2**20)), idle_ttl_s=0)


def test_a_model_that_does_not_fit_beside_a_busy_one_waits_for_it_to_go_idle():
    pool, engines = pool_with(budget_for_one())

    async def scenario():
        order: list[str] = []
        release = asyncio.Event()

        async def busy_a():
            async with pool.use(model("a")):
                order.append("a serving")
                await release.wait()
            order.append("a idle")

        async def then_b():
            while "a serving" not in order:
                await asyncio.sleep(0.01)
            async with pool.use(model("b")):
                order.append("b serving")

        task_a, task_b = asyncio.create_task(busy_a()), asyncio.create_task(then_b())
        await asyncio.sleep(0.2)
        assert order == ["a serving"] and not pool.is_loaded("b")  # b waits: loading it would pass the budget
        release.set()
        await asyncio.gather(task_a, task_b)
        assert order == ["a serving", "a idle", "b serving"]
        assert pool.is_loaded("b") and not pool.is_loaded("a") and engines[0].closed

    run(scenario())


def test_the_wait_for_room_ends_with_a_503_after_load_wait_s():
    from minerva.core.errors import ModelUnavailableError

    pool, _ = pool_with(budget_for_one().model_copy(update={"load_wait_s": 0.2}))

    async def scenario():
        async with pool.use(model("a")):
            with pytest.raises(ModelUnavailableError) as refused:
                async with pool.use(model("b")):
                    pass
            assert refused.value.status_code == 503 and "memory budget" in refused.value.message
        assert not pool.is_loaded("b")

    run(scenario())
