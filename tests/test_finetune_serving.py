"""Serving fine-tuned models: PEFT → llama.cpp LoRA GGUF, adapters on both engines, ft: ids in the registry.

The adapter is made here with PEFT directly (a LoRA on SmolLM2 with a seeded, non-zero B, so it
changes the output), not by the trainer: these tests check serving, not training.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import openai
import pytest
from safetensors_models import smollm2_safetensors_dir  # noqa: F401 - session fixture

from minerva.core.errors import InvalidRequestError, ModelNotFoundError
from minerva.engine.base import GenerationEnd, GenerationRequest, PromptProcessed, SamplingParams, TokenEvent
from minerva.finetune.gguf_lora import AdapterConversionError, permute_rows, write_lora_gguf
from minerva.formats.detect import read_model_info
from minerva.registry import register_fine_tuned, unregister_fine_tuned
from minerva.settings import Settings
from tests.servers import running_server

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")
gguf = pytest.importorskip("gguf")

pytestmark = pytest.mark.slow

GREEDY = SamplingParams(temperature=0.0)
FRANCE = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
BASE_GGUF_ID = "smollm2-135m-instruct"
BASE_ST_ID = "smollm2-st"
FT_GGUF_ID = f"ft:{BASE_GGUF_ID}:local:serving:abcd1234"
FT_ST_ID = f"ft:{BASE_ST_ID}:local:serving:abcd1234"


@pytest.fixture(scope="module")
def adapter_dir(smollm2_safetensors_dir, tmp_path_factory) -> Path:  # noqa: F811
    """A PEFT LoRA (r=8, alpha=16, all linear layers) on SmolLM2 with seeded A and non-zero B."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(smollm2_safetensors_dir, dtype=torch.float32)
    config = peft.LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", lora_dropout=0.0)
    tuned = peft.get_peft_model(model, config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in tuned.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                scale = 0.15 if "lora_B" in name else 1 / parameter.shape[1] ** 0.5
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)
    out = tmp_path_factory.mktemp("adapter") / "final"
    tuned.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def adapter_gguf(adapter_dir, smollm2_path, tmp_path_factory) -> Path:
    return write_lora_gguf(adapter_dir, smollm2_path, tmp_path_factory.mktemp("gguf") / "final.gguf")


def _peft_tensors(adapter_dir: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(adapter_dir / "adapter_model.safetensors"))


# ---- the GGUF LoRA file --------------------------------------------------------------------


def test_lora_gguf_reads_back_with_gguf_py_as_llama_cpp_expects(adapter_dir, adapter_gguf):
    reader = gguf.GGUFReader(adapter_gguf)
    fields = {name: f.contents() for name, f in reader.fields.items() if not name.startswith("GGUF.")}
    assert fields["general.type"] == "adapter" and fields["adapter.type"] == "lora"
    assert fields["general.architecture"] == "llama" and fields["adapter.lora.alpha"] == 16.0
    tensors = {t.name: t for t in reader.tensors}
    assert len(tensors) == 30 * 7 * 2
    peft_tensors = _peft_tensors(adapter_dir)
    prefix = "base_model.model.model.layers.3."
    a_q, b_q = peft_tensors[prefix + "self_attn.q_proj.lora_A.weight"], peft_tensors[prefix + "self_attn.q_proj.lora_B.weight"]
    b_v = peft_tensors[prefix + "self_attn.v_proj.lora_B.weight"]
    assert tuple(tensors["blk.3.attn_q.weight.lora_a"].shape) == (576, 8)  # GGML order: ne[0] = in features
    np.testing.assert_array_equal(np.asarray(tensors["blk.3.attn_q.weight.lora_a"].data), a_q)
    np.testing.assert_array_equal(np.asarray(tensors["blk.3.attn_q.weight.lora_b"].data), permute_rows(b_q, 9))
    assert not np.array_equal(permute_rows(b_q, 9), b_q)
    np.testing.assert_array_equal(np.asarray(tensors["blk.3.attn_v.weight.lora_b"].data), b_v)


def test_q_k_permutation_is_the_one_the_base_gguf_was_converted_with(smollm2_path, smollm2_safetensors_dir):
    from safetensors.numpy import load_file

    hf = load_file(str(smollm2_safetensors_dir / "model.safetensors"))
    tensors = {t.name: t for t in gguf.GGUFReader(smollm2_path).tensors}
    for name, hf_name, heads in (("blk.5.attn_q.weight", "model.layers.5.self_attn.q_proj.weight", 9),
                                 ("blk.5.attn_k.weight", "model.layers.5.self_attn.k_proj.weight", 3)):
        t = tensors[name]
        # the SafeTensors test model was dequantised from this GGUF (with rows un-permuted by transformers)
        gguf_rows = gguf.quants.dequantize(t.data, t.tensor_type).reshape(hf[hf_name].shape)
        np.testing.assert_allclose(permute_rows(hf[hf_name], heads), gguf_rows, atol=1e-6)


def test_adapters_llama_cpp_cannot_load_are_refused(adapter_dir, smollm2_path, tmp_path):
    dora = tmp_path / "dora"
    shutil.copytree(adapter_dir, dora)
    config = json.loads((dora / "adapter_config.json").read_text())
    (dora / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(AdapterConversionError, match="use_dora"):
        write_lora_gguf(dora, smollm2_path, tmp_path / "dora.gguf")
    assert not (tmp_path / "dora.gguf").exists()
    with pytest.raises(AdapterConversionError, match="base model has no tensor"):
        write_lora_gguf(adapter_dir, _two_layer_gguf(tmp_path), tmp_path / "wrong-base.gguf")
    assert [p.name for p in tmp_path.iterdir() if p.suffix in (".gguf", ".partial")] == ["tiny.gguf"]


def _two_layer_gguf(tmp_path: Path) -> Path:
    from tests.model_fixtures import GGUFSpec, write_gguf

    return write_gguf(tmp_path / "tiny.gguf", GGUFSpec(extra={"llama.attention.head_count": 4,
                                                               "llama.attention.head_count_kv": 4}))


# ---- adapters inside each engine ----------------------------------------------------------


@dataclass
class Run:
    tokens: list[int] = field(default_factory=list)
    cached_tokens: int | None = None
    end: GenerationEnd | None = None


async def _collect(engine, adapter: str | None, max_tokens: int = 16) -> Run:
    run = Run()
    request = GenerationRequest(tuple(engine.tokenize(FRANCE)), max_tokens, GREEDY, adapter=adapter)
    async for event in engine.generate(request):
        if isinstance(event, TokenEvent):
            run.tokens.append(event.token_id)
        elif isinstance(event, PromptProcessed):
            run.cached_tokens = event.cached_tokens
        elif isinstance(event, GenerationEnd):
            run.end = event
    return run


def _load(kind: str, path: Path):
    info = read_model_info(path)
    if kind == "llamacpp":
        from minerva.engine.llamacpp.engine import LlamaCppEngine

        return LlamaCppEngine.load(info, n_ctx=512, n_slots=2, n_threads=2)
    from minerva.engine.transformers.engine import TransformersEngine

    return TransformersEngine.load(info, n_ctx=512, n_slots=2, n_threads=2)


@dataclass
class AdapterRuns:
    shared: list[Run]  # base, adapter, base, adapter on one engine
    alone: list[Run]  # adapter, adapter on a fresh engine that never ran the base
    slots_with_adapter: int = 0
    slots_after_drop: int = 0
    after_drop: Run | None = None  # the adapter again, once dropped


def _adapter_outputs(kind: str, model_path: Path, adapter: str) -> AdapterRuns:
    engine = _load(kind, model_path)
    try:
        runs = AdapterRuns([asyncio.run(_collect(engine, a)) for a in (None, adapter, None, adapter)], [])
        runs.slots_with_adapter = engine.stats().total_slots
        engine.drop_adapter(adapter)
        runs.slots_after_drop = engine.stats().total_slots
        runs.after_drop = asyncio.run(_collect(engine, adapter))
    finally:
        engine.close()
    fresh = _load(kind, model_path)
    try:
        runs.alone = [asyncio.run(_collect(fresh, a)) for a in (adapter, adapter)]
    finally:
        fresh.close()
    return runs


@pytest.fixture(scope="module")
def llamacpp_runs(smollm2_path, adapter_gguf):
    return _adapter_outputs("llamacpp", smollm2_path, str(adapter_gguf))


@pytest.fixture(scope="module")
def transformers_runs(smollm2_safetensors_dir, adapter_dir):  # noqa: F811
    return _adapter_outputs("transformers", smollm2_safetensors_dir, str(adapter_dir))


@pytest.mark.parametrize("runs_fixture", ["llamacpp_runs", "transformers_runs"])
def test_adapter_changes_output_and_never_shares_cells_with_the_base(runs_fixture, request):
    runs = request.getfixturevalue(runs_fixture)
    (base, tuned, base_again, tuned_again), (alone, alone_again) = runs.shared, runs.alone
    assert len(base.tokens) > 3 and tuned.tokens != base.tokens
    assert base_again.tokens == base.tokens  # the base output is unchanged after an adapter request
    # each adapter run equals the same run on an engine that never saw the base's cells
    assert (tuned.tokens, tuned_again.tokens) == (alone.tokens, alone_again.tokens)
    # the base had this very prompt cached; the adapter's first run reused none of it, its second its own
    assert base_again.cached_tokens and base_again.cached_tokens > 0
    assert tuned.cached_tokens == 0 and tuned_again.cached_tokens and tuned_again.cached_tokens > 0


def test_both_engines_apply_the_adapter_alike(llamacpp_runs, transformers_runs):
    """The converted GGUF adapter on the Q4_1 base steers greedy decoding as PEFT does on its float twin.

    Only the first tokens are compared: llama.cpp's 8-bit activations make the two drift apart later.
    """
    ll_base, ll_tuned = llamacpp_runs.shared[:2]
    tf_base, tf_tuned = transformers_runs.shared[:2]
    assert ll_base.tokens == tf_base.tokens
    assert ll_tuned.tokens[:2] == tf_tuned.tokens[:2] != ll_base.tokens[:2]


def test_a_dropped_llama_cpp_adapter_frees_its_context_and_reloads_afresh(llamacpp_runs):
    runs = llamacpp_runs
    assert (runs.slots_with_adapter, runs.slots_after_drop) == (4, 2)  # the adapter's own 2 slots, then gone
    assert runs.after_drop.cached_tokens == 0 and runs.after_drop.tokens == runs.alone[0].tokens


# ---- the registry and the API -------------------------------------------------------------


@pytest.fixture(scope="module")
def server(smollm2_safetensors_dir, adapter_dir, adapter_gguf, tmp_path_factory):  # noqa: F811
    empty = tmp_path_factory.mktemp("no-models")
    settings = Settings(models_dirs=[empty], models={BASE_ST_ID: smollm2_safetensors_dir}, n_threads=2, n_slots=2,
                        n_ctx=1024, data_dir=tmp_path_factory.mktemp("data"))
    with running_server(settings) as running:
        register_fine_tuned(running.state.registry, FT_GGUF_ID, BASE_GGUF_ID, adapter_gguf)
        register_fine_tuned(running.state.registry, FT_ST_ID, BASE_ST_ID, adapter_dir)
        yield running


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0, timeout=300)


def _answer(client, model: str) -> str:
    reply = client.chat.completions.create(model=model, temperature=0, max_tokens=12,
                                           messages=[{"role": "user", "content": "What is the capital of France?"}])
    return reply.choices[0].message.content


def test_models_list_fine_tuned_models_with_base_and_adapter(client, adapter_gguf):
    models = {m.id: m.model_dump() for m in client.models.list().data}
    assert models[BASE_GGUF_ID]["fine_tuned"] is False
    tuned = models[FT_GGUF_ID]
    assert tuned["fine_tuned"] is True and tuned["base_model"] == BASE_GGUF_ID
    assert tuned["adapter_format"] == "gguf" and tuned["adapter_size_mb"] == round(adapter_gguf.stat().st_size / 2**20, 2)
    assert models[FT_ST_ID]["adapter_format"] == "peft" and models[FT_ST_ID]["base_model"] == BASE_ST_ID
    assert client.models.retrieve(FT_ST_ID).model_dump()["fine_tuned"] is True


@pytest.mark.parametrize(("base_id", "tuned_id"), [(BASE_GGUF_ID, FT_GGUF_ID), (BASE_ST_ID, FT_ST_ID)])
def test_a_fine_tuned_id_is_served_by_its_base_engine_with_its_adapter(client, server, base_id, tuned_id):
    base = _answer(client, base_id)
    tuned = _answer(client, tuned_id)
    assert tuned != base
    assert _answer(client, base_id) == base  # the base's cached cells were not touched by the adapter
    assert set(server.state.pool.loaded()) >= {base_id} and tuned_id not in server.state.pool.loaded()


def test_registration_checks_base_and_adapter_kind(server, adapter_dir, adapter_gguf):
    registry = server.state.registry
    with pytest.raises(ModelNotFoundError):
        register_fine_tuned(registry, "ft:nope:local::x", "no-such-model", adapter_gguf)
    with pytest.raises(InvalidRequestError, match="LoRA .gguf"):
        register_fine_tuned(registry, "ft:x:local::y", BASE_GGUF_ID, adapter_dir)
    with pytest.raises(InvalidRequestError, match="PEFT directory"):
        register_fine_tuned(registry, "ft:x:local::y", BASE_ST_ID, adapter_gguf)
    with pytest.raises(InvalidRequestError, match="already taken"):
        register_fine_tuned(registry, BASE_ST_ID, BASE_GGUF_ID, adapter_gguf)


def test_an_unregistered_fine_tuned_model_is_gone(client, server, adapter_gguf):
    model_id = f"ft:{BASE_GGUF_ID}:local:gone:zz99zz99"
    register_fine_tuned(server.state.registry, model_id, BASE_GGUF_ID, adapter_gguf)
    assert client.models.retrieve(model_id).id == model_id
    assert unregister_fine_tuned(server.state.registry, model_id).adapter == str(adapter_gguf)
    assert unregister_fine_tuned(server.state.registry, model_id) is None
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve(model_id)
    with pytest.raises(openai.NotFoundError):
        _answer(client, model_id)


def test_deleting_a_served_fine_tuned_model_frees_its_adapter_context(client, server, adapter_gguf, tmp_path):
    own_copy = tmp_path / "to-delete.gguf"  # its own path, so its context is not the other tests' adapter's
    own_copy.write_bytes(adapter_gguf.read_bytes())
    model_id = f"ft:{BASE_GGUF_ID}:local:deleted:dd11dd11"
    register_fine_tuned(server.state.registry, model_id, BASE_GGUF_ID, own_copy)
    _answer(client, BASE_GGUF_ID)
    engine = server.state.pool.loaded()[BASE_GGUF_ID]
    before = engine.stats().total_slots
    _answer(client, model_id)
    assert engine.stats().total_slots == before + 2  # the adapter's own context and slots
    assert client.models.delete(model_id).deleted
    assert engine.stats().total_slots == before
    with pytest.raises(openai.NotFoundError):
        _answer(client, model_id)
