"""The lazy GGUF reader against gguf-py's writer and reader, real files and hostile ones."""

from __future__ import annotations

import struct
from pathlib import Path

import gguf
import pytest
from tests.model_fixtures import (
    CHATML_TEMPLATE,
    GGUFSpec,
    GGUFTensorSpec,
    gguf_bytes,
    gguf_kv,
    gguf_string,
    gguf_tensor_record,
    small_raw_gguf,
    write_gguf,
)

from minerva.core.errors import ModelFormatError
from minerva.formats.detect import discover_models, is_model_root, read_model_info
from minerva.formats.file_types import GGML_TYPES, LLAMA_FILE_TYPES
from minerva.formats.gguf import GGUFArray, GGUFValueType, read_gguf_header, read_gguf_strings

Q = gguf.GGMLQuantizationType
FT = gguf.LlamaFileType


def _write(tmp_path: Path, data: bytes, name: str = "m.gguf") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# --------------------------------------------------------------------------- tables


def test_ggml_type_table_matches_gguf_py() -> None:
    for qtype, (block_elements, block_bytes) in gguf.GGML_QUANT_SIZES.items():
        assert GGML_TYPES[int(qtype)] == (qtype.name, block_elements, block_bytes)


def test_llama_file_type_table_matches_gguf_py() -> None:
    for file_type in gguf.LlamaFileType:
        if file_type == FT.GUESSED:
            continue
        expected = file_type.name.removeprefix("ALL_").removeprefix("MOSTLY_").removesuffix("_MOE")
        assert LLAMA_FILE_TYPES[int(file_type)] == expected
    assert LLAMA_FILE_TYPES[38] == "MXFP4" and LLAMA_FILE_TYPES[15] == "Q4_K_M"


# --------------------------------------------------------------------------- well-formed files


def test_header_matches_gguf_py_reader(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "m.gguf", GGUFSpec(chat_template=CHATML_TEMPLATE, extra={"x.list": [1, 2, 3]}))
    ours = read_gguf_header(path)
    theirs = gguf.GGUFReader(path)
    assert ours.version == 3
    assert ours.file_size == path.stat().st_size
    assert ours.data_offset == theirs.data_offset
    assert [t.name for t in ours.tensors] == [t.name for t in theirs.tensors]
    for mine, ref in zip(ours.tensors, theirs.tensors):
        assert mine.shape == tuple(int(d) for d in ref.shape)
        assert mine.ggml_type == int(ref.tensor_type)
        assert ours.data_offset + mine.offset == ref.data_offset
        assert mine.n_bytes == int(ref.n_bytes)
        assert mine.n_elements == int(ref.n_elements)
    assert ours.get("general.architecture") == "llama"
    assert ours.get("llama.context_length") == 4096
    assert ours.get("tokenizer.chat_template") == CHATML_TEMPLATE
    assert ours.get("x.list") == (1, 2, 3)
    tokens = ours.get("tokenizer.ggml.tokens")
    assert isinstance(tokens, GGUFArray) and tokens.length == 300
    assert tokens.element_type == GGUFValueType.STRING
    assert set(ours.metadata) == {k for k in theirs.fields if not k.startswith("GGUF.")}


def test_small_arrays_are_decoded_and_large_ones_are_not(tmp_path: Path) -> None:
    spec = GGUFSpec(vocab_size=64, extra={"small.floats": [0.5, 1.5], "big.ints": list(range(65))})
    header = read_gguf_header(write_gguf(tmp_path / "m.gguf", spec))
    assert header.get("tokenizer.ggml.tokens")[:3] == ("<unk>", "<s>", "</s>")
    assert header.get("small.floats") == (0.5, 1.5)
    big = header.get("big.ints")
    assert isinstance(big, GGUFArray) and len(big) == 65


@pytest.mark.parametrize(
    ("file_type", "name"),
    [
        (FT.ALL_F32, "F32"),
        (FT.MOSTLY_F16, "F16"),
        (FT.MOSTLY_Q4_0, "Q4_0"),
        (FT.MOSTLY_Q8_0, "Q8_0"),
        (FT.MOSTLY_Q4_K_M, "Q4_K_M"),
        (FT.MOSTLY_Q5_K_S, "Q5_K_S"),
        (FT.MOSTLY_IQ4_XS, "IQ4_XS"),
        (FT.MOSTLY_BF16, "BF16"),
        (FT.MOSTLY_MXFP4_MOE, "MXFP4"),
    ],
)
def test_file_type_names(tmp_path: Path, file_type: FT, name: str) -> None:
    info = read_model_info(write_gguf(tmp_path / "m.gguf", GGUFSpec(file_type=file_type)))
    assert info.quantization == name


def test_quantization_falls_back_to_dominant_tensor_type_mxfp4(tmp_path: Path) -> None:
    tensors = (
        GGUFTensorSpec("blk.0.ffn_up_exps.weight", Q.MXFP4, (2880, 32)),
        GGUFTensorSpec("blk.0.attn_q.weight", Q.Q8_0, (256, 4)),
        GGUFTensorSpec("blk.0.attn_norm.weight", Q.F32, (256,)),
    )
    path = write_gguf(tmp_path / "gpt-oss-tiny.gguf", GGUFSpec(arch="gpt-oss", file_type=None, tensors=tensors))
    header = read_gguf_header(path)
    mxfp4 = header.tensors[0]
    assert mxfp4.type_name == "MXFP4"
    assert mxfp4.n_bytes == 2880 // 32 * 17 * 32
    info = read_model_info(path)
    assert info.quantization == "MXFP4"
    assert info.tensor_count == 3
    assert info.parameter_count == 2880 * 32 + 256 * 4 + 256


def test_model_info_of_a_chat_model(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "tiny.gguf", GGUFSpec(chat_template=CHATML_TEMPLATE, vocab_size=1000))
    info = read_model_info(path)
    assert info.format == "gguf" and info.kind == "chat"
    assert info.name == "Tiny Test Model"
    assert info.architecture == "llama"
    assert info.context_length == 4096
    assert info.embedding_length == 256 and info.block_count == 2
    assert info.vocab_size == 1000
    assert (info.bos_token, info.eos_token) == ("<s>", "</s>")
    assert info.chat_template == CHATML_TEMPLATE
    assert info.tokenizer_model == "gpt2"
    assert info.file_size_bytes == path.stat().st_size
    assert info.files == (path,)
    assert info.mtime == path.stat().st_mtime


def test_completion_model_without_template_and_name_from_stem(tmp_path: Path) -> None:
    info = read_model_info(write_gguf(tmp_path / "base-model.gguf", GGUFSpec(name=None)))
    assert info.kind == "completion"
    assert info.name == "base-model"


def test_embedding_gguf(tmp_path: Path) -> None:
    spec = GGUFSpec(arch="bert", pooling_type=1, file_type=FT.MOSTLY_F16, context_length=512)
    info = read_model_info(write_gguf(tmp_path / "emb.gguf", spec))
    assert info.kind == "embedding" and info.pooling == "mean" and info.context_length == 512


def test_token_texts_by_id_walk_the_vocabulary(tmp_path: Path) -> None:
    vocab = [f"token-{i}" for i in range(5000)]
    path = write_gguf(tmp_path / "m.gguf", GGUFSpec(vocab=vocab, bos_token_id=4321, eos_token_id=4999))
    header = read_gguf_header(path)
    tokens = header.get("tokenizer.ggml.tokens")
    assert read_gguf_strings(path, tokens, [0, 17, 4999, 5000, -1]) == {0: "token-0", 17: "token-17", 4999: "token-4999"}
    around_checkpoint = [4094, 4095, 4096, 4097, 4999]
    assert read_gguf_strings(path, tokens, around_checkpoint) == {i: f"token-{i}" for i in around_checkpoint}
    assert read_gguf_strings(path, tokens, [4096]) == {4096: "token-4096"}
    assert len(tokens.checkpoints) == 2
    info = read_model_info(path)
    assert (info.bos_token, info.eos_token) == ("token-4321", "token-4999")


def test_version_2_is_read(tmp_path: Path) -> None:
    data = bytearray(small_raw_gguf())
    data[4:8] = struct.pack("<I", 2)
    assert read_gguf_header(_write(tmp_path, bytes(data))).version == 2


def test_big_endian_file_is_rejected_clearly(tmp_path: Path) -> None:
    path = tmp_path / "be.gguf"
    writer = gguf.GGUFWriter(path, "llama", endianess=gguf.GGUFEndian.BIG)
    writer.add_context_length(16)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelFormatError, match="big-endian"):
        read_gguf_header(path)


# --------------------------------------------------------------------------- split files


def test_split_gguf_is_one_model(tmp_path: Path) -> None:
    tensors = tuple(GGUFTensorSpec(f"blk.{i}.w", Q.Q4_0, (32, 2)) for i in range(5))
    first = write_gguf(tmp_path / "big.gguf", GGUFSpec(tensors=tensors, split_max_tensors=2))
    assert first.name == "big-00001-of-00003.gguf"
    parts = sorted(tmp_path.glob("big-*.gguf"))
    info = read_model_info(first)
    assert info.files == tuple(parts)
    assert info.tensor_count == 5
    assert info.file_size_bytes == sum(p.stat().st_size for p in parts)
    assert info.quantization == "Q4_K_M"
    assert ("split_count", "3") in info.extra
    assert read_model_info(parts[2]).path == first  # a later part resolves to the set
    assert discover_models(tmp_path) == [first]
    assert is_model_root(first) and not is_model_root(parts[1])
    parts[1].unlink()
    with pytest.raises(ModelFormatError, match="00002-of-00003.gguf is missing"):
        read_model_info(first)


# --------------------------------------------------------------------------- discovery


def test_discover_models(tmp_path: Path) -> None:
    write_gguf(tmp_path / "a.gguf")
    write_gguf(tmp_path / "mmproj-a.gguf", GGUFSpec(arch="clip"))
    (tmp_path / "notes.txt").write_text("hi")
    (tmp_path / ".hidden.gguf").write_bytes(b"x")
    nested = tmp_path / "Qwen-GGUF"
    nested.mkdir()
    write_gguf(nested / "q.gguf")
    (nested / "deeper").mkdir()
    write_gguf(nested / "deeper" / "too-deep.gguf")
    assert discover_models(tmp_path) == [nested / "q.gguf", tmp_path / "a.gguf", tmp_path / "mmproj-a.gguf"]


# --------------------------------------------------------------------------- hostile files


def test_every_truncation_is_a_format_error(tmp_path: Path) -> None:
    data = small_raw_gguf()
    path = tmp_path / "t.gguf"
    for length in range(len(data)):
        path.write_bytes(data[:length])
        with pytest.raises(ModelFormatError):
            read_gguf_header(path)


def _kv_file(tmp_path: Path, *kvs: bytes, **kwargs) -> Path:
    return _write(tmp_path, gguf_bytes(list(kvs), **kwargs))


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "truncated"),
        (b"GGUF", "truncated"),
        (b"GGML" + bytes(40), "not a GGUF"),
        (gguf_bytes(version=1), "unsupported GGUF version 1"),
        (gguf_bytes(version=0x03000000), "big-endian"),
        (gguf_bytes(n_tensors=2**60), "2^60"),
        (gguf_bytes(n_kv=2**64 - 1), "metadata entries"),
        (gguf_bytes([gguf_kv("k", 8, gguf_string("x", length=2**62))]), "limit"),
        (gguf_bytes([gguf_kv("k", 8, gguf_string("x", length=2**20))]), "truncated"),
        (gguf_bytes([gguf_string("k" * 10, length=2**62) + bytes(16)]), "limit"),
        (gguf_bytes([gguf_kv("k", 13, b"\0" * 8)]), "unknown value type 13"),
        (gguf_bytes([gguf_kv("k", 9, struct.pack("<IQ", 8, 2**60))]), "more than the file holds"),
        (gguf_bytes([gguf_kv("k", 9, struct.pack("<IQ", 6, 2**61))]), "more than the file holds"),
        (gguf_bytes([gguf_kv("k", 9, struct.pack("<IQ", 9, 2**62))]), "more than the file holds"),
        (gguf_bytes([gguf_kv("k", 9, struct.pack("<IQ", 77, 1))]), "unknown value type 77"),
        (gguf_bytes([gguf_kv("k", 9, struct.pack("<IQ", 8, 100) + gguf_string("a", length=2**63) * 100)]), "truncated"),
        (gguf_bytes([gguf_kv("k", 9, struct.pack("<IQ", 9, 1) * 40)]), "nests arrays"),
        (gguf_bytes([gguf_kv("k", 4, b"\1\0\0\0")] * 2), "duplicate metadata key"),
        (gguf_bytes([gguf_kv("general.alignment", 4, struct.pack("<I", 3))]), "power of two"),
        (gguf_bytes([gguf_kv("general.alignment", 4, struct.pack("<I", 0))]), "power of two"),
        (gguf_bytes(tensors=[gguf_tensor_record("t", (4,), 0, 0)]), "past the end"),
        (gguf_bytes(tensors=[gguf_tensor_record("t", (4,), 0, 0)], data=bytes(15)), "runs past the end"),
        (gguf_bytes(tensors=[gguf_tensor_record("t", (4,), 0, 2**63)], data=bytes(64)), "runs past the end"),
        (gguf_bytes(tensors=[gguf_tensor_record("t", (4,), 0, 8)], data=bytes(64)), "not aligned"),
        (gguf_bytes(tensors=[gguf_tensor_record("t", (2**64 - 1,), 0, 0)], data=bytes(64)), "negative dimension"),
        (gguf_bytes(tensors=[gguf_tensor_record("t", (2**62, 2**62), 0, 0)], data=bytes(64)), "overflows"),
        (gguf_bytes(tensors=[gguf_tensor_record("t", (1, 1, 1, 1, 1), 0, 0)], data=bytes(64)), "5 dimensions"),
        (gguf_bytes(tensors=[gguf_tensor_record("t", (4,), 33, 0)], data=bytes(64)), "unknown GGML type 33"),
        (gguf_bytes(tensors=[gguf_tensor_record("t", (31,), 2, 0)], data=bytes(64)), "block size"),
        (gguf_bytes(tensors=[gguf_tensor_record("t", (1,), 0, 0)] * 2, data=bytes(64)), "duplicate tensor"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_hostile_headers_raise_format_error(tmp_path: Path, data: bytes, reason: str) -> None:
    path = _write(tmp_path, data)
    with pytest.raises(ModelFormatError) as caught:
        read_gguf_header(path)
    assert caught.value.path == path
    assert str(path) in caught.value.message
    if reason == "2^60":
        reason = "1152921504606846976 tensors"
    assert reason in caught.value.reason


def test_unreadable_paths_are_format_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelFormatError, match="cannot open"):
        read_gguf_header(tmp_path / "missing.gguf")
    with pytest.raises(ModelFormatError):
        read_gguf_header(tmp_path)
    with pytest.raises(ModelFormatError, match="no such file"):
        read_model_info(tmp_path / "missing.gguf")
    (tmp_path / "x.bin").write_bytes(b"hello")
    with pytest.raises(ModelFormatError, match="not a .gguf"):
        read_model_info(tmp_path / "x.bin")


def test_invalid_utf8_in_strings_is_replaced_not_raised(tmp_path: Path) -> None:
    path = _kv_file(tmp_path, gguf_kv("general.name", 8, gguf_string(b"\xff\xfebad")))
    assert read_gguf_header(path).get("general.name") == "\ufffd\ufffdbad"


# --------------------------------------------------------------------------- the real model


@pytest.mark.slow
def test_real_smollm2_matches_gguf_py(smollm2_path: Path) -> None:
    reader = gguf.GGUFReader(smollm2_path)
    header = read_gguf_header(smollm2_path)
    assert len(header.tensors) == len(reader.tensors)
    assert header.data_offset == reader.data_offset
    for mine, ref in zip(header.tensors, reader.tensors):
        assert (mine.name, mine.n_bytes, header.data_offset + mine.offset) == (
            ref.name,
            int(ref.n_bytes),
            ref.data_offset,
        )

    def field(key: str):
        return reader.fields[key].contents()

    info = read_model_info(smollm2_path)
    assert info.quantization == "Q4_1" == gguf.LlamaFileType(field("general.file_type")).name.removeprefix("MOSTLY_")
    assert info.architecture == field("general.architecture") == "llama"
    assert info.context_length == field("llama.context_length") == 8192
    assert info.tensor_count == len(reader.tensors)
    assert info.parameter_count == sum(int(t.n_elements) for t in reader.tensors)
    assert info.vocab_size == len(reader.fields["tokenizer.ggml.tokens"].data)
    tokens = field("tokenizer.ggml.tokens")
    assert info.bos_token == tokens[field("tokenizer.ggml.bos_token_id")]
    assert info.eos_token == tokens[field("tokenizer.ggml.eos_token_id")]
    assert info.chat_template == field("tokenizer.chat_template")
    assert info.kind == "chat"
    assert info.file_size_bytes == smollm2_path.stat().st_size


def test_discover_models_of_a_missing_directory_is_a_format_error(tmp_path: Path) -> None:
    with pytest.raises(ModelFormatError, match="cannot list"):
        discover_models(tmp_path / "nope")
