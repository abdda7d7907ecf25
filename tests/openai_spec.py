"""OpenAI's own response schemas, extracted from github.com/openai/openai-openapi, and a validator for them.

Regenerate the extract (needs PyYAML) from a checkout of that repository:

    python tests/openai_spec.py path/to/openai-openapi/openapi.yaml COMMIT
"""

from __future__ import annotations

import copy
import functools
import json
import sys
from pathlib import Path
from typing import Any, NamedTuple

SPEC_DIR = Path(__file__).parent / "data" / "openai_openapi"
SCHEMAS_JSON = SPEC_DIR / "schemas.json"
SOURCE_REPO = "openai/openai-openapi"
SOURCE_PATH = "openapi.yaml"

ROOTS = ("CreateChatCompletionResponse", "CreateChatCompletionStreamResponse", "CreateCompletionResponse",
         "CreateEmbeddingResponse", "ListModelsResponse", "Model", "ErrorResponse", "CompletionUsage")
# Keywords that only document (or are OpenAI/OpenAPI extensions jsonschema ignores anyway): dropped.
ANNOTATIONS = {"description", "example", "examples", "title", "deprecated", "default", "discriminator"}
NAME_MAPS = {"properties", "patternProperties", "$defs"}  # their keys are names, not keywords


# --- extraction --------------------------------------------------------------------------------------------

def _convert(node: Any, names: bool = False) -> Any:
    """One OpenAPI schema node as JSON Schema 2020-12: local $refs, `nullable` as a null branch, no annotations."""
    if isinstance(node, list):
        return [_convert(item) for item in node]
    if not isinstance(node, dict):
        return node
    if names:
        return {key: _convert(value) for key, value in node.items()}
    out = {}
    for key, value in node.items():
        if key in ANNOTATIONS or key.startswith("x-") or key == "nullable":
            continue
        if key == "$ref":
            prefix = "#/components/schemas/"
            assert value.startswith(prefix), f"non-local $ref {value!r}"
            value = "#/$defs/" + value[len(prefix):]
        out[key] = _convert(value, names=key in NAME_MAPS)
    if node.get("nullable") is True:  # an OpenAPI 3.0 leftover, not a 3.1 keyword: null is allowed too
        out = {"anyOf": [out, {"type": "null"}]}
    return out


def _refs(node: Any) -> set[str]:
    """The schema names a converted node $refs."""
    if isinstance(node, list):
        return set().union(*map(_refs, node)) if node else set()
    if not isinstance(node, dict):
        return set()
    found = {node["$ref"].rsplit("/", 1)[1]} if isinstance(node.get("$ref"), str) else set()
    return found.union(*(_refs(value) for value in node.values()))


def extract(spec: dict, commit: str) -> dict:
    """The ROOTS schemas of a parsed openapi.yaml and everything they $ref, as one JSON Schema document."""
    assert spec["openapi"].startswith("3.1"), f"expected OpenAPI 3.1 (JSON Schema 2020-12), got {spec['openapi']}"
    schemas = spec["components"]["schemas"]
    defs: dict[str, Any] = {}
    todo = list(ROOTS)
    while todo:
        name = todo.pop()
        if name not in defs:
            defs[name] = _convert(schemas[name])
            todo.extend(_refs(defs[name]))
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$comment": (f"Extracted from github.com/{SOURCE_REPO} {SOURCE_PATH} at commit {commit} "
                     f"(OpenAPI {spec['openapi']}, API version {spec['info']['version']}) by tests/openai_spec.py; "
                     "descriptions dropped, `nullable` made a null branch. MIT licensed, see LICENSE."),
        "$defs": dict(sorted(defs.items())),
    }


def write_extract(yaml_path: str | Path, commit: str) -> Path:
    """Parse the downloaded openapi.yaml and write SCHEMAS_JSON from it."""
    import yaml  # only needed to regenerate

    spec = yaml.safe_load(Path(yaml_path).read_text(encoding="utf-8"))
    SCHEMAS_JSON.parent.mkdir(parents=True, exist_ok=True)
    SCHEMAS_JSON.write_text(json.dumps(extract(spec, commit), indent=1) + "\n", encoding="utf-8")
    return SCHEMAS_JSON


# --- relaxations -------------------------------------------------------------------------------------------

class Relaxation(NamedTuple):
    """Where the spec is stricter than OpenAI's real API: also accept `extra` at `path` in $defs."""

    path: tuple[str, ...]
    extra: dict
    reason: str
    stream_only: bool = False


RELAXATIONS = (
    Relaxation(("Embedding", "properties", "embedding"), {"type": "string"},
               "encoding_format=base64 returns the float32 vector as a base64 string; the spec lists only the array"),
    Relaxation(("CreateCompletionResponse", "properties", "choices", "items", "properties", "finish_reason"),
               {"type": "null"},
               "streamed text_completion chunks reuse this schema, and carry finish_reason null until the last one",
               stream_only=True),
    *(Relaxation((name, "properties", "system_fingerprint"), {"type": "null"},
                 "OpenAI sends system_fingerprint null for some models (the spec's own createChatCompletion "
                 "logprobs example has it null); the SDKs type it Optional[str]")
      for name in ("CreateChatCompletionResponse", "CreateChatCompletionStreamResponse", "CreateCompletionResponse")),
)


# --- validation --------------------------------------------------------------------------------------------

@functools.cache
def _validator(schema_name: str, stream: bool):
    """A Draft 2020-12 validator for one schema of the extract, relaxations applied."""
    import jsonschema

    document = json.loads(SCHEMAS_JSON.read_text(encoding="utf-8"))
    if schema_name not in document["$defs"]:
        raise KeyError(f"{schema_name!r} is not in {SCHEMAS_JSON.name}; extracted: {sorted(document['$defs'])}")
    defs = copy.deepcopy(document["$defs"])
    for relaxation in RELAXATIONS:
        if relaxation.stream_only and not stream:
            continue
        *parents, leaf = relaxation.path
        holder = functools.reduce(lambda node, key: node[key], parents, defs)
        holder[leaf] = {"anyOf": [holder[leaf], relaxation.extra]}
    schema = {"$schema": document["$schema"], "$defs": defs, "$ref": f"#/$defs/{schema_name}"}
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _leaves(error) -> list:
    """The innermost violations: into anyOf/oneOf, following the branch for the value's type that fails least."""
    if not error.context:
        return [error]
    branches: dict[Any, list] = {}
    for sub in error.context:
        branches.setdefault(sub.relative_schema_path[0], []).append(sub)
    same_type = [subs for subs in branches.values()
                 if not any(sub.validator == "type" and not sub.relative_path for sub in subs)]
    fewest = sorted(same_type, key=len)
    if not fewest or (len(fewest) > 1 and len(fewest[0]) == len(fewest[1])):
        return [error]
    return [leaf for sub in fewest[0] for leaf in _leaves(sub)]


class OpenAISpecError(AssertionError):
    """A payload that does not follow OpenAI's OpenAPI spec."""


def validate_openai(schema_name: str, payload: dict, *, stream: bool = False) -> None:
    """Raise OpenAISpecError listing every violation of the named spec schema (`stream`: a streamed chunk)."""
    errors = _validator(schema_name, stream).iter_errors(payload)
    violations = sorted(f"{leaf.json_path}: {_short(leaf.message)}" for error in errors for leaf in _leaves(error))
    if violations:
        raise OpenAISpecError(f"{schema_name}{' (streamed)' if stream else ''}: {len(violations)} violation(s) "
                              "of OpenAI's OpenAPI spec:\n  " + "\n  ".join(violations))


def _short(message: str, limit: int = 160) -> str:
    """A jsonschema message, cut where it quotes a long instance."""
    return message if len(message) <= limit else message[:limit] + "…"


if __name__ == "__main__":
    print(write_extract(sys.argv[1], sys.argv[2]))
