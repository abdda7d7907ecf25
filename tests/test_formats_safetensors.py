"""SafeTensors headers and Hugging Face directories: real files, the real MiniLM, hostile headers."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from tests.model_fixtures import (  # noqa: F401  (minilm_dir is a fixture)
    CHATML_TEMPLATE,
    minilm_dir,
    tiny_tensors,
    write_hf_directory,
    write_raw_safetensors,
    write_safetensors,
)
from safetensors import safe_open

from minerva.core.errors import ModelFormatError
from minerva.formats.detect import discover_models, is_model_root, read_model_info
from minerva.formats.safetensors import read_hf_directory, read_safetensors_header


def test_header_matches_the_safetensors_package(tmp_path: Path) -> None:
    tensors = tiny_tensors()
    path = write_safetensors(tmp_path / "m.safetensors", tensors, {"format": "pt"})
    header = read_safetensors_header(path)
    assert header.metadata == {"format": "pt"}
    assert header.file_size == path.stat().st_size
    with safe_open(str(path), "np") as reference:
        assert sorted(t.name for t in header.tensors) == sorted(reference.keys())
        for tensor in header.tensors:
            array = reference.get_tensor(tensor.name)
            assert tensor.shape == array.shape
            assert tensor.n_bytes == array.nbytes
            assert tensor.n_elements == array.size
    assert header.parameter_count == sum(t.size for t in tensors.values())


def test_single_file_model_info(tmp_path: Path) -> None:
    path = write_safetensors(tmp_path / "weights.safetensors", tiny_tensors(dtype=np.float32))
    info = read_model_info(path)
    assert info.format == "safetensors" and info.kind == "completion"
    assert info.quantization == "F32"
    assert info.name == "weights" and info.files == (path,)
    assert info.tensor_count == 6
    assert is_model_root(path)


def test_bf16_dominant_dtype_by_bytes(tmp_path: Path) -> None:
    header = {
        "big": {"dtype": "BF16", "shape": [4, 4], "data_offsets": [0, 32]},
        "small": {"dtype": "F32", "shape": [2], "data_offsets": [32, 40]},
    }
    path = write_raw_safetensors(tmp_path / "bf16.safetensors", header, bytes(40))
    info = read_model_info(path)
    assert info.quantization == "BF16" and info.parameter_count == 18


def test_hf_directory_single_file_with_template_list(tmp_path: Path) -> None:
    tokenizer_config = {
        "bos_token": {"content": "<s>", "lstrip": False},
        "eos_token": "</s>",
        "tokenizer_class": "LlamaTokenizer",
        "chat_template": [{"name": "tool_use", "template": "TOOLS"}, {"name": "default", "template": CHATML_TEMPLATE}],
    }
    directory = write_hf_directory(tmp_path / "Tiny-Chat", tokenizer_config=tokenizer_config)
    info = read_model_info(directory)
    assert info.kind == "chat" and info.chat_template == CHATML_TEMPLATE
    assert (info.bos_token, info.eos_token) == ("<s>", "</s>")
    assert info.architecture == "llama" and info.context_length == 2048
    assert info.embedding_length == 8 and info.block_count == 2 and info.vocab_size == 32
    assert info.quantization == "F16"
    assert info.tokenizer_model == "LlamaTokenizer"
    assert info.name == "Tiny-Chat"
    assert info.files == (directory / "model.safetensors",)
    assert ("hf_architecture", "LlamaForCausalLM") in info.extra


def test_chat_template_file_wins_and_string_template(tmp_path: Path) -> None:
    directory = write_hf_directory(
        tmp_path / "d", tokenizer_config={"chat_template": "FROM CONFIG"}, chat_template_file="FROM FILE"
    )
    assert read_model_info(directory).chat_template == "FROM FILE"
    (directory / "chat_template.jinja").unlink()
    assert read_model_info(directory).chat_template == "FROM CONFIG"


def test_sharded_directory_sums_over_shards(tmp_path: Path) -> None:
    tensors = tiny_tensors()
    directory = write_hf_directory(tmp_path / "sharded", tensors=tensors, shards=3)
    info = read_model_info(directory)
    shards = sorted(directory.glob("model-*.safetensors"))
    assert len(shards) == 3 and info.files == tuple(shards)
    assert info.tensor_count == len(tensors)
    assert info.parameter_count == sum(t.size for t in tensors.values())
    assert info.file_size_bytes == sum(p.stat().st_size for p in shards)
    assert info.mtime >= max(p.stat().st_mtime for p in shards)
    assert is_model_root(directory) and discover_models(tmp_path) == [directory]
    assert discover_models(directory) == [directory]
    shards[1].unlink()
    with pytest.raises(ModelFormatError, match="shard model-00002-of-00003.safetensors is missing"):
        read_model_info(directory)


def test_index_cannot_point_outside_the_directory(tmp_path: Path) -> None:
    directory = write_hf_directory(tmp_path / "d", shards=2)
    index = json.loads((directory / "model.safetensors.index.json").read_text())
    index["weight_map"]["lm_head.weight"] = "../../etc/passwd.safetensors"
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelFormatError, match="invalid shard"):
        read_model_info(directory)


def test_quantization_config_wins(tmp_path: Path) -> None:
    config = {"quantization_config": {"quant_method": "mxfp4"}, "model_type": "gpt_oss"}
    info = read_model_info(write_hf_directory(tmp_path / "oss", config=config))
    assert info.quantization == "MXFP4" and info.architecture == "gpt_oss"


def test_text_config_of_multimodal_configs(tmp_path: Path) -> None:
    config = {
        "architectures": ["Gemma3ForConditionalGeneration"],
        "model_type": "gemma3",
        "hidden_size": None,
        "num_hidden_layers": None,
        "max_position_embeddings": None,
        "vocab_size": None,
        "text_config": {"hidden_size": 640, "num_hidden_layers": 18, "max_position_embeddings": 32768},
    }
    info = read_model_info(write_hf_directory(tmp_path / "g", config=config))
    assert (info.embedding_length, info.block_count, info.context_length) == (640, 18, 32768)
    assert info.kind == "completion"


def test_bare_model_architecture_is_embedding(tmp_path: Path) -> None:
    info = read_model_info(write_hf_directory(tmp_path / "e", config={"architectures": ["XLMRobertaModel"]}))
    assert info.kind == "embedding"


def test_real_minilm_directory(minilm_dir: Path) -> None:
    info = read_model_info(minilm_dir)
    assert info.format == "safetensors"
    assert info.kind == "embedding"
    assert info.architecture == "bert"
    assert info.quantization == "F32"
    assert info.pooling == "mean"
    assert info.context_length == 256  # sentence_bert_config.json max_seq_length
    assert info.embedding_length == 384 and info.block_count == 6 and info.vocab_size == 30522
    assert info.tokenizer_model == "BertTokenizer"
    assert ("normalize_embeddings", "true") in info.extra
    weights = minilm_dir / "model.safetensors"
    assert info.files == (weights,) and info.file_size_bytes == weights.stat().st_size
    with safe_open(str(weights), "np") as reference:
        keys = list(reference.keys())
        assert info.tensor_count == len(keys)
        assert info.parameter_count == sum(int(np.prod(reference.get_slice(k).get_shape())) for k in keys)
    hf = read_hf_directory(minilm_dir)
    assert hf.is_sentence_transformers


# --------------------------------------------------------------------------- hostile files


def _entry(dtype: str = "F32", shape=(2,), offsets=(0, 8)) -> dict:
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


@pytest.mark.parametrize(
    ("header", "data", "header_length", "reason"),
    [
        (b"", b"", None, "too short"),
        ({"a": _entry()}, bytes(8), 2**62, "limit"),
        ({"a": _entry()}, bytes(8), 5000, "larger than the file"),
        (b"{not json", bytes(8), None, "not valid JSON"),
        (b"\xff\xfe{}", b"", None, "not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, b"", None, "not valid JSON"),
        (b"[1, 2]", b"", None, "not a JSON object"),
        (b'{"a": 1' + b"9" * 5000 + b"}", b"", None, ""),
        ({"a": 5}, b"", None, "not an object"),
        ({"a": _entry(dtype="F128")}, bytes(8), None, "unknown dtype"),
        ({"a": _entry(dtype=7)}, bytes(8), None, "unknown dtype"),
        ({"a": _entry(shape=(-2,))}, bytes(8), None, "non-negative"),
        ({"a": _entry(shape=(True,))}, bytes(8), None, "non-negative"),
        ({"a": _entry(shape=(2.0,))}, bytes(8), None, "non-negative"),
        ({"a": {"dtype": "F32", "shape": "2", "data_offsets": [0, 8]}}, bytes(8), None, "shape"),
        ({"a": _entry(offsets=(0, 8, 9))}, bytes(8), None, "bad data_offsets"),
        ({"a": _entry(offsets=(8, 0))}, bytes(8), None, "bad data_offsets"),
        ({"a": _entry(offsets=(0, 2**70))}, bytes(8), None, "past the data section"),
        ({"a": _entry(offsets=(0, 16))}, bytes(8), None, "past the data section"),
        ({"a": _entry(shape=(3,))}, bytes(8), None, "do not match"),
        ({"a": _entry(shape=(2**40, 2**40))}, bytes(8), None, "do not match"),
        ({"a": _entry(), "b": _entry(offsets=(4, 12))}, bytes(16), None, "overlaps"),
        ({"__metadata__": [1], "a": _entry()}, bytes(8), None, "__metadata__"),
    ],
)
def test_hostile_safetensors_headers(tmp_path: Path, header, data: bytes, header_length, reason: str) -> None:
    path = tmp_path / "bad.safetensors"
    if header == b"":
        path.write_bytes(b"\1\2\3")
    else:
        write_raw_safetensors(path, header, data, header_length=header_length)
    with pytest.raises(ModelFormatError) as caught:
        read_safetensors_header(path)
    assert caught.value.path == path and reason in caught.value.reason
    with pytest.raises(ModelFormatError):
        read_model_info(path)


def test_hostile_hf_directories(tmp_path: Path) -> None:
    directory = write_hf_directory(tmp_path / "d")
    (directory / "config.json").write_text("{")
    with pytest.raises(ModelFormatError, match="config.json: not valid JSON"):
        read_model_info(directory)
    (directory / "config.json").write_text("[]")
    with pytest.raises(ModelFormatError, match="not a JSON object"):
        read_model_info(directory)
    (directory / "config.json").write_text("{}")
    (directory / "modules.json").write_text('{"not": "a list"}')
    with pytest.raises(ModelFormatError, match="not a JSON list"):
        read_model_info(directory)
    (directory / "modules.json").unlink()
    (directory / "model.safetensors.index.json").write_text('{"weight_map": {}}')
    with pytest.raises(ModelFormatError, match="weight_map"):
        read_model_info(directory)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelFormatError, match="no config.json"):
        read_model_info(empty)
    (empty / "config.json").write_text("{}")
    with pytest.raises(ModelFormatError, match="no .safetensors weights"):
        read_model_info(empty)


def test_truncated_after_length_prefix(tmp_path: Path) -> None:
    path = tmp_path / "t.safetensors"
    path.write_bytes(struct.pack("<Q", 10) + b"{}")
    with pytest.raises(ModelFormatError, match="larger than the file"):
        read_safetensors_header(path)
