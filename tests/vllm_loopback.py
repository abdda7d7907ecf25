"""A vLLM lookalike on loopback: vLLM's OpenAI wire format over a real llama-server's generation (real tokens).

Shapes follow vLLM 0.33.0's source (the wheel's vllm/ tree):
- /v1/completions takes CompletionRequest (entrypoints/openai/completion/protocol.py:49-297) and streams
  CompletionStreamResponse chunks as completion_stream_generator writes them (completion/serving.py:438-487,
  model_dump_json(exclude_unset=True)): every choice field set, `prompt_token_ids` on the first chunk only,
  `token_ids` the chunk's new ids; the token that ends the sequence comes in the last chunk with its id, no text
  (v1/engine/detokenizer.py:107-128) and finish_reason "stop", stop_reason null; the usage chunk has no choices
  (serving.py:535-547, exclude_none) and `prompt_tokens_details` only with --enable-prompt-tokens-details;
  then `data: [DONE]`.
- logprobs with return_tokens_as_token_ids: tokens as "token_id:N", top_logprobs the sampled token then the
  top N (serving.py:714-804).
- /tokenize {prompt, add_special_tokens} -> {count, max_model_len, tokens, token_strs}; /detokenize {tokens}
  -> {prompt} (entrypoints/serve/tokenize/protocol.py); /tokenizer_info only when enabled (api_router.py).
- /health: 200, empty body (serve/instrumentator/health.py); /metrics: vllm:num_requests_running and
  vllm:num_requests_waiting gauges labelled by engine and model_name (v1/metrics/loggers.py:527-546).
- /v1/models: ModelCard (serve/engine/protocol.py:105-113) with owned_by "vllm", root, max_model_len.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler

import httpx

from tests.upstreams import LoopbackHTTP

COMPLETION_FIELDS = frozenset({  # CompletionRequest's fields in 0.33.0: anything else would be ignored with a warning
    "model", "prompt", "echo", "frequency_penalty", "logit_bias", "logprobs", "max_tokens", "n", "presence_penalty",
    "seed", "stop", "stream", "stream_options", "suffix", "temperature", "top_p", "user", "use_beam_search", "top_k",
    "min_p", "repetition_penalty", "watermarking", "length_penalty", "stop_token_ids", "include_stop_str_in_output",
    "ignore_eos", "min_tokens", "skip_special_tokens", "spaces_between_special_tokens", "truncate_prompt_tokens",
    "truncation_side", "allowed_token_ids", "prompt_logprobs", "logprob_token_ids", "bad_words", "prompt_embeds",
    "add_special_tokens", "response_format", "structured_outputs", "priority", "request_id", "session_id",
    "return_tokens_as_token_ids", "return_token_ids", "return_weight_versions", "cache_salt", "kv_transfer_params",
    "vllm_xargs", "stream_interval"})
STRUCTURED_OUTPUT_FIELDS = frozenset({"json", "regex", "choice", "grammar", "json_object", "structural_tag",
                                      "disable_any_whitespace", "disable_additional_properties", "whitespace_pattern"})


def metrics_text(model: str, running: int, waiting: int) -> str:
    """vLLM's scheduler gauges in Prometheus text, as prometheus_client writes them."""
    labels = f'engine="0",model_name="{model}"'
    return (f"# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
            f"# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{{{labels}}} {float(running)}\n"
            f"# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n"
            f"# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{{{labels}}} {float(waiting)}\n"
            f'vllm:num_requests_waiting_by_reason{{{labels},reason="capacity"}} {float(waiting)}\n')


class VllmLoopback(LoopbackHTTP):
    """`vllm serve` as seen on the wire, generating through a llama-server (`llama_url`, its OpenAI base URL)."""

    def __init__(self, llama_url: str, served_name: str = "HuggingFaceTB/SmolLM2-135M-Instruct",
                 tokenizer_info: bool = True, prompt_tokens_details: bool = True, extra_waiting: int = 0):
        self.llama = llama_url.removesuffix("/v1")
        self.served_name = served_name
        self.tokenizer_info = tokenizer_info
        self.prompt_tokens_details = prompt_tokens_details
        self.extra_waiting = extra_waiting  # requests others have queued, reported in /metrics
        self.bodies: list[dict] = []  # every /v1/completions body received
        self.running = 0
        self.disconnects = 0  # streams the client closed before their end
        self._lock = threading.Lock()
        props = httpx.get(f"{self.llama}/props", timeout=10).json()
        self.props = props
        self.max_model_len = int(props["default_generation_settings"]["n_ctx"])
        self.eos_id = httpx.post(f"{self.llama}/tokenize", json={"content": props["eos_token"], "parse_special": True},
                                 timeout=10).json()["tokens"][0]
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args) -> None:
                pass

            def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _json(self, data: object, status: int = 200) -> None:
                self._send(status, json.dumps(data).encode())

            def _error(self, message: str, status: int = 400) -> None:  # vLLM's ErrorResponse
                kind = "BadRequestError" if status == 400 else "NotFoundError" if status == 404 else "InternalServerError"
                self._json({"error": {"message": message, "type": kind, "param": None, "code": status}}, status)

            def do_GET(self) -> None:  # noqa: N802
                if self.path == "/v1/models":
                    self._json({"object": "list", "data": [{
                        "id": fake.served_name, "object": "model", "created": int(time.time()), "owned_by": "vllm",
                        "root": fake.served_name, "parent": None, "max_model_len": fake.max_model_len,
                        "permission": [{"id": "modelperm-0", "object": "model_permission", "allow_sampling": True}]}]})
                elif self.path == "/health":
                    self._send(200, b"")
                elif self.path == "/metrics":
                    with fake._lock:
                        running = fake.running
                    self._send(200, metrics_text(fake.served_name, running, fake.extra_waiting).encode(), "text/plain")
                elif self.path == "/tokenizer_info" and fake.tokenizer_info:
                    self._json({"tokenizer_class": "GPT2TokenizerFast", "add_prefix_space": False,
                                "bos_token": fake.props["bos_token"], "eos_token": fake.props["eos_token"],
                                "model_max_length": 8192, "chat_template": fake.props["chat_template"]})
                else:
                    self._json({"detail": "Not Found"}, 404)  # FastAPI's answer for a route it lacks

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                if body.get("model") not in (None, fake.served_name):
                    self._error(f"The model `{body.get('model')}` does not exist.", 404)
                elif self.path == "/tokenize":
                    self._tokenize(body)
                elif self.path == "/detokenize":
                    text = httpx.post(f"{fake.llama}/detokenize", json={"tokens": body["tokens"]}, timeout=10).json()
                    self._json({"prompt": text["content"]})
                elif self.path == "/v1/completions":
                    self._completions(body)
                else:
                    self._json({"detail": "Not Found"}, 404)

            def _tokenize(self, body: dict) -> None:
                if "messages" in body or not isinstance(body.get("prompt"), str):
                    self._error("this loopback tokenizes prompt text only")
                    return
                tokens = httpx.post(f"{fake.llama}/tokenize", json={
                    "content": body["prompt"], "add_special": body.get("add_special_tokens", True),
                    "parse_special": True}, timeout=10).json()["tokens"]
                self._json({"count": len(tokens), "max_model_len": fake.max_model_len, "tokens": tokens,
                            "token_strs": None})

            def _completions(self, body: dict) -> None:
                fake.bodies.append(body)
                unknown = set(body) - COMPLETION_FIELDS
                structured = body.get("structured_outputs") or {}
                prompt = body.get("prompt")
                if unknown or set(structured) - STRUCTURED_OUTPUT_FIELDS:
                    self._error(f"fields vLLM does not know: {sorted(unknown | (set(structured) - STRUCTURED_OUTPUT_FIELDS))}")
                elif not (isinstance(prompt, list) and prompt and all(isinstance(t, int) and t >= 0 for t in prompt)):
                    self._error("this loopback takes the prompt as token ids")
                elif not body.get("stream") or body.get("n", 1) != 1 or body.get("echo"):
                    self._error("this loopback streams one choice, without echo")
                elif len(prompt) + body.get("max_tokens", 16) > fake.max_model_len:
                    self._error(f"This model's maximum context length is {fake.max_model_len} tokens. However, you "
                                f"requested {len(prompt) + body.get('max_tokens', 16)} tokens.")
                else:
                    with fake._lock:
                        fake.running += 1
                    try:
                        self._stream(body, prompt)
                    except OSError:  # the client hung up: vLLM aborts the request
                        fake.disconnects += 1
                    finally:
                        with fake._lock:
                            fake.running -= 1

            def _stream(self, body: dict, prompt: list[int]) -> None:
                want_logprobs = body.get("logprobs") is not None
                llama = {"prompt": prompt, "n_predict": body.get("max_tokens", 16), "stream": True,
                         "return_tokens": True, "cache_prompt": True, "temperature": body.get("temperature", 1.0),
                         "top_p": body.get("top_p", 1.0), "top_k": body.get("top_k", 0), "min_p": body.get("min_p", 0.0),
                         "presence_penalty": body.get("presence_penalty", 0.0),
                         "frequency_penalty": body.get("frequency_penalty", 0.0),
                         "repeat_penalty": body.get("repetition_penalty", 1.0), "repeat_last_n": fake.max_model_len,
                         "typical_p": 1.0, "dry_multiplier": 0.0, "xtc_probability": 0.0, "mirostat": 0,
                         "seed": body.get("seed", -1), "ignore_eos": body.get("ignore_eos", False),
                         "logit_bias": [[int(k), v] for k, v in (body.get("logit_bias") or {}).items()]}
                if (body.get("structured_outputs") or {}).get("grammar"):
                    llama["grammar"] = body["structured_outputs"]["grammar"]
                if want_logprobs:
                    llama["n_probs"] = max(1, body["logprobs"])
                request_id, created = f"cmpl-{id(body):x}", int(time.time())
                base = {"id": request_id, "object": "text_completion", "created": created, "model": fake.served_name}

                def choice(text: str, ids: list[int], logprobs: object, finish: str | None, first: bool) -> dict:
                    return {**base, "choices": [{
                        "index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish, "stop_reason": None,
                        "prompt_token_ids": prompt if first else None,
                        "token_ids": ids if body.get("return_token_ids") else None}], "kv_transfer_params": None}

                def vllm_logprobs(entries: list[dict]) -> dict | None:
                    if not want_logprobs:
                        return None
                    return {"text_offset": [0] * len(entries), "token_logprobs": [e["logprob"] for e in entries],
                            "tokens": [f"token_id:{e['id']}" for e in entries],
                            "top_logprobs": [{f"token_id:{t['id']}": t["logprob"]
                                              for t in [e, *e.get("top_logprobs", ())][:body["logprobs"] + 1]}
                                             for e in entries]}

                with httpx.stream("POST", f"{fake.llama}/completion", json=llama, timeout=120) as upstream:
                    if upstream.status_code >= 400:
                        self._error(upstream.read().decode()[:200], upstream.status_code)
                        return
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream; charset=utf-8")
                    self.end_headers()
                    held: dict | None = None  # vLLM puts the finish on the last token's own chunk
                    first, emitted, final = True, 0, {}
                    for line in upstream.iter_lines():
                        if not line.startswith("data: "):
                            continue
                        chunk = json.loads(line[6:])
                        if chunk.get("stop"):
                            final = chunk
                            break
                        if held is not None:
                            self._event(held)
                        ids = list(chunk.get("tokens", ()))
                        held = choice(chunk.get("content", ""), ids,
                                      vllm_logprobs(chunk.get("completion_probabilities", [])), None, first)
                        first, emitted = False, emitted + len(ids)
                    if final.get("stop_type") == "eos":  # llama-server streamed the end token with no text
                        if held is None:
                            raise RuntimeError("llama-server ended on end of generation without a token")
                        last = held["choices"][0]["token_ids"][-1]
                        held["choices"][0]["finish_reason"] = "stop"
                        held["choices"][0]["stop_reason"] = None if last == fake.eos_id else last  # a stop_token_ids hit
                    elif held is not None:
                        held["choices"][0]["finish_reason"] = "length"
                    if held is not None:
                        self._event(held)
                    if (body.get("stream_options") or {}).get("include_usage"):
                        usage = {"prompt_tokens": len(prompt), "total_tokens": len(prompt) + emitted,
                                 "completion_tokens": emitted}
                        if fake.prompt_tokens_details:
                            usage["prompt_tokens_details"] = {"cached_tokens": final.get("timings", {}).get("cache_n", 0)}
                        self._event({**base, "choices": [], "usage": usage})
                    self.wfile.write(b"data: [DONE]\n\n")

            def _event(self, data: dict) -> None:
                self.wfile.write(f"data: {json.dumps(data)}\n\n".encode())
                self.wfile.flush()

        self.serve(Handler)
