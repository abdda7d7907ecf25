"""vLLM's wire format, pure: the /v1/completions body minerva sends, and its stream chunks decoded into events.

Chunks are shaped as vLLM 0.33.0 writes them: completion_stream_generator in
vllm/entrypoints/openai/completion/serving.py:438-487 (a choice per chunk, exclude_unset, every choice field set)
and :535-547 (the usage chunk, no choices, exclude_none); the ending token's id with no text
(vllm/v1/engine/detokenizer.py:107-128); logprobs keyed "token_id:N" (serving.py:714-804).
"""

from __future__ import annotations

import json

import pytest

from minerva.core.errors import InvalidRequestError, UpstreamError
from minerva.engine.base import GenerationEnd, GenerationRequest, SamplingParams, TokenEvent, TokenLogprob
from minerva.engine.upstream.chat_templates import configured_props, tokenizer_props
from minerva.engine.upstream.vllm_protocol import ChunkDecoder, completion_body, queue_length
from tests.vllm_loopback import COMPLETION_FIELDS, STRUCTURED_OUTPUT_FIELDS, metrics_text


def chunk(text: str, ids: list[int], finish: str | None = None, stop_reason: object = None,
          logprobs: dict | None = None, first: bool = False) -> dict:
    return {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m", "choices": [{
        "index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish, "stop_reason": stop_reason,
        "prompt_token_ids": [1, 2, 3] if first else None, "token_ids": ids}], "kv_transfer_params": None}


def usage(prompt: int, completion: int, cached: int | None = None) -> dict:
    data: dict = {"prompt_tokens": prompt, "total_tokens": prompt + completion, "completion_tokens": completion}
    if cached is not None:
        data["prompt_tokens_details"] = {"cached_tokens": cached}
    return {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m", "choices": [], "usage": data}


def decode(chunks: list[dict], logprobs: bool = False, top: int = 0) -> list:
    decoder = ChunkDecoder(logprobs, top, 3)
    return [event for c in chunks for event in decoder.feed(json.loads(json.dumps(c)))]


def test_the_body_is_token_ids_in_with_every_setting_explicit_and_only_vllm_fields():
    sampling = SamplingParams(temperature=0.0, top_p=0.9, top_k=40, min_p=0.05, presence_penalty=0.5,
                              frequency_penalty=0.25, repeat_penalty=1.1, seed=7, logit_bias=((2, -100.0), (17, 3.0)),
                              grammar='root ::= "yes" | "no"', logprobs=True, top_logprobs=3)
    body = completion_body(GenerationRequest((1, 2, 3), 32, sampling), frozenset({2, 0}))
    assert set(body) <= COMPLETION_FIELDS and set(body["structured_outputs"]) <= STRUCTURED_OUTPUT_FIELDS
    assert body["prompt"] == [1, 2, 3] and body["max_tokens"] == 32 and body["stream"] is True
    assert body["stream_options"] == {"include_usage": True} and body["return_token_ids"] is True
    assert (body["temperature"], body["top_p"], body["top_k"], body["min_p"]) == (0.0, 0.9, 40, 0.05)
    assert (body["presence_penalty"], body["frequency_penalty"], body["repetition_penalty"]) == (0.5, 0.25, 1.1)
    assert body["seed"] == 7 and body["logit_bias"] == {"2": -100.0, "17": 3.0}
    assert body["structured_outputs"] == {"grammar": 'root ::= "yes" | "no"'}
    assert body["logprobs"] == 3 and body["return_tokens_as_token_ids"] is True
    assert body["stop_token_ids"] == [0, 2] and body["stop"] == [] and body["ignore_eos"] is False
    assert body["skip_special_tokens"] is False and body["spaces_between_special_tokens"] is False
    assert body["include_stop_str_in_output"] is False and body["min_tokens"] == 0 and body["n"] == 1


def test_a_default_request_leaves_out_seed_bias_grammar_and_logprobs():
    body = completion_body(GenerationRequest((5,), 4))
    assert not {"seed", "logit_bias", "structured_outputs", "logprobs", "return_tokens_as_token_ids"} & set(body)
    assert body["top_k"] == 0 and body["stop_token_ids"] == []  # vLLM: top_k 0 disables (0.11.0 and later)


def test_tokens_stream_with_their_text_and_the_end_token_is_dropped_and_not_counted():
    events = decode([chunk("", [], first=True), chunk("Paris", [3], first=False), chunk(" is", [4]),
                     chunk("", [2], finish="stop"), usage(3, 3, cached=2)])
    assert events == [TokenEvent(3, b"Paris"), TokenEvent(4, b" is"), GenerationEnd("stop", 3, 2, 2)]


def test_a_character_split_over_two_tokens_arrives_whole_on_the_second():
    # vLLM's detokenizer holds back an incomplete character: the first token's chunk has no text
    events = decode([chunk("", [120], first=True), chunk("é", [121]), chunk("!", [0], finish="length"), usage(3, 3)])
    assert events == [TokenEvent(120, b""), TokenEvent(121, "é".encode()), TokenEvent(0, b"!"),
                      GenerationEnd("length", 3, 3, 0)]


def test_a_stop_token_ending_the_sequence_is_dropped_but_a_stop_string_keeps_its_token():
    by_token = decode([chunk("a", [7]), chunk("", [9], finish="stop", stop_reason=9), usage(3, 2)])
    assert by_token == [TokenEvent(7, b"a"), GenerationEnd("stop", 3, 1, 0)]
    by_string = decode([chunk("a", [7]), chunk("", [9], finish="stop", stop_reason="END"), usage(3, 2)])
    assert by_string == [TokenEvent(7, b"a"), TokenEvent(9, b""), GenerationEnd("stop", 3, 2, 0)]


def test_several_tokens_in_one_chunk_give_the_text_to_the_first():
    events = decode([chunk("Hello world", [10, 11]), chunk("", [2], finish="stop"), usage(3, 3)])
    assert events == [TokenEvent(10, b"Hello world"), TokenEvent(11, b""), GenerationEnd("stop", 3, 2, 0)]


def test_logprobs_keyed_by_token_id_become_the_chosen_and_top_alternatives():
    logprobs = {"text_offset": [0], "token_logprobs": [-0.25], "tokens": ["token_id:3"],
                "top_logprobs": [{"token_id:3": -0.25, "token_id:8": -3.0, "token_id:5": -1.5}]}
    events = decode([chunk("Paris", [3], logprobs=logprobs), chunk("", [2], finish="length"), usage(3, 2)],
                    logprobs=True, top=2)
    assert events[0] == TokenEvent(3, b"Paris", -0.25, (TokenLogprob(3, b"", -0.25), TokenLogprob(5, b"", -1.5)))
    assert events[-1] == GenerationEnd("length", 3, 2, 0)


def test_without_the_usage_chunk_the_end_comes_at_the_end_of_the_stream():
    decoder = ChunkDecoder(False, 0, 4)
    assert decoder.feed(chunk("a", [7])) == [TokenEvent(7, b"a")]
    assert decoder.feed(chunk("", [2], finish="stop")) == []
    assert decoder.close() == [GenerationEnd("stop", 4, 1, 0)]
    with pytest.raises(UpstreamError, match="before the sequence finished"):
        ChunkDecoder(False, 0, 4).close()


def test_error_chunks_and_malformed_chunks_are_typed_errors():
    stream_error = {"error": {"message": "prompt too long", "type": "BadRequestError", "param": None, "code": 400}}
    with pytest.raises(InvalidRequestError, match="prompt too long"):
        ChunkDecoder(False, 0, 3).feed(stream_error)
    internal = {"error": {"message": "engine died", "type": "InternalServerError", "param": None, "code": 500}}
    with pytest.raises(UpstreamError, match="engine died"):
        ChunkDecoder(False, 0, 3).feed(internal)
    no_ids = chunk("a", [])
    no_ids["choices"][0]["token_ids"] = None
    with pytest.raises(UpstreamError, match="0.10.2"):
        ChunkDecoder(False, 0, 3).feed(no_ids)
    with pytest.raises(UpstreamError, match="malformed"):
        ChunkDecoder(False, 0, 3).feed({"choices": [{"text": "a", "token_ids": ["x"]}]})
    with pytest.raises(UpstreamError, match="abort"):
        ChunkDecoder(False, 0, 3).feed(chunk("", [], finish="abort"))


def test_the_queue_is_running_plus_waiting_over_every_engine():
    assert queue_length(metrics_text("m", 3, 4)) == 7
    two_engines = metrics_text("m", 1, 0) + metrics_text("m", 2, 5).replace('engine="0"', 'engine="1"')
    assert queue_length(two_engines) == 8
    assert queue_length("llamacpp:requests_processing 2\n") is None


def test_a_template_comes_from_tokenizer_config_a_jinja_file_or_a_model_folder(tmp_path):
    config = {"chat_template": "{{ messages }}", "bos_token": {"content": "<s>", "lstrip": False},
              "eos_token": "</s>", "tokenizer_class": "LlamaTokenizer"}
    assert tokenizer_props(config) == {"chat_template": "{{ messages }}", "bos_token": "<s>", "eos_token": "</s>"}
    named = {"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]}
    assert tokenizer_props(named)["chat_template"] == "D"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": None}))
    (tmp_path / "chat_template.jinja").write_text("{{ jinja }}")
    assert configured_props(tmp_path) == {"chat_template": "{{ jinja }}", "bos_token": "<s>", "eos_token": "</s>"}
    assert configured_props(tmp_path / "chat_template.jinja") == {"chat_template": "{{ jinja }}"}
    with pytest.raises(InvalidRequestError, match="no chat_template"):
        configured_props(tmp_path / "tokenizer_config.json")
    with pytest.raises(InvalidRequestError):
        configured_props(tmp_path / "missing.jinja")
