"""The web page's HTTP side: its static files (shipped in the package, cached by ETag, open without a key) and
the /minerva/ routes it reads (models in full detail, unreadable files, load and unload)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from importlib import resources
from pathlib import Path

import httpx
import pytest

from minerva.api.routes_web import CONTENT_SECURITY_POLICY
from minerva.settings import Settings
from tests.scripted_engine import Script, scripted_loader
from tests.servers import running_server

MODEL_ID = "org/smol:q4"  # ids may contain "/" and ":"
WEB = resources.files("minerva") / "web"


@pytest.fixture(scope="module")
def served(tmp_path_factory, smollm2_path):
    models = tmp_path_factory.mktemp("models")
    (models / "broken.gguf").write_bytes(b"GGUF\x03\x00\x00\x00not a header")
    settings = Settings(models_dirs=[models], models={MODEL_ID: smollm2_path}, include_default_model=False,
                        n_threads=2, n_slots=1, n_ctx=512, idle_ttl_s=600)
    with running_server(settings) as server:
        server.root = f"http://127.0.0.1:{server.port}"
        yield server


def test_the_page_is_served_at_the_root_with_a_policy_that_keeps_it_on_this_server(served):
    page = httpx.get(served.root + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert "default-src 'self'" in CONTENT_SECURITY_POLICY and "connect-src 'self'" in CONTENT_SECURITY_POLICY
    assert page.headers["cache-control"] == "no-cache"
    assert '<script type="module" src="web/app.js">' in page.text
    again = httpx.get(served.root + "/", headers={"if-none-match": page.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    direct = httpx.get(served.root + "/web/index.html")
    assert direct.headers["content-security-policy"] == CONTENT_SECURITY_POLICY


def test_every_file_the_page_names_is_served_with_its_type(served):
    page = httpx.get(served.root + "/").text
    named = re.findall(r'(?:href|src)="(web/[^"]+)"', page)
    assert "web/app.js" in named and "web/style.css" in named
    for path in named:
        response = httpx.get(f"{served.root}/{path}")
        assert response.status_code == 200, path
        assert response.content == (WEB / path.removeprefix("web/")).read_bytes()
    assert httpx.get(served.root + "/web/app.js").headers["content-type"] == "text/javascript; charset=utf-8"
    assert httpx.get(served.root + "/web/style.css").headers["content-type"] == "text/css; charset=utf-8"


def test_every_module_import_of_the_page_resolves_to_a_shipped_file():
    for script in [p for p in WEB.iterdir() if p.name.endswith(".js")]:
        for target in re.findall(r"^import .*? from '(\./[^']+)';", script.read_text(), re.MULTILINE):
            assert (WEB / target.removeprefix("./")).is_file(), f"{script.name} imports {target}"


def test_only_shipped_files_exist_under_web(served):
    for path in ("/web/nope.js", "/web/../pyproject.toml", "/web/%2e%2e/minerva/cli.py", "/web/"):
        response = httpx.get(served.root + path)
        assert response.status_code == 404, path
        assert response.json()["error"]["code"] == "not_found"


def test_vendored_libraries_are_listed_with_their_licenses():
    vendor = WEB / "vendor"
    listing = (vendor / "VENDORED.md").read_text()
    for item in [p for p in vendor.iterdir() if p.name != "VENDORED.md"]:
        assert item.name in listing, f"{item.name} is not listed in VENDORED.md"
    for library in ("marked", "dompurify", "highlight.js", "uplot"):
        assert (vendor / f"LICENSE.{library}").is_file()
    assert re.search(r"\| marked \(Markdown\) \| 18\.2\.1 \| MIT", listing)


def test_the_page_needs_no_key_but_its_data_does(tmp_path):
    settings = Settings(models_dirs=[tmp_path], include_default_model=False, api_keys=["sk-right"])
    with running_server(settings) as server:
        root = f"http://127.0.0.1:{server.port}"
        assert httpx.get(root + "/").status_code == 200
        assert httpx.get(root + "/web/app.js").status_code == 200
        refused = httpx.get(root + "/minerva/models")
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
        allowed = httpx.get(root + "/minerva/models", headers={"authorization": "Bearer sk-right"})
        assert allowed.status_code == 200 and allowed.json()["data"] == []


def inspect_json(*args: str) -> dict:
    result = subprocess.run([sys.executable, "-m", "minerva.cli", "inspect", *args, "--json"],
                            capture_output=True, text=True, timeout=120, check=True)
    return json.loads(result.stdout)


def test_models_carry_the_listing_everything_inspect_shows_and_where_they_were_found(served, smollm2_path, tmp_path):
    answer = httpx.get(served.root + "/minerva/models").json()
    listed = {m["id"]: m for m in httpx.get(served.base_url + "/models").json()["data"]}
    (model,) = answer["data"]
    assert {k: model[k] for k in listed[MODEL_ID]} == listed[MODEL_ID]
    assert model["source"] == "explicit" and model["path"] == model["found_at"] == str(smollm2_path)
    shown = inspect_json("--no-default-model", "--models-dir", str(tmp_path), "--model", f"{MODEL_ID}={smollm2_path}",
                         MODEL_ID)
    assert model["inspect"] == shown
    assert model["inspect"]["files"] == [str(smollm2_path)] and model["inspect"]["id"] == MODEL_ID


def test_files_that_could_not_be_read_are_listed_with_the_reason(served):
    (failure,) = httpx.get(served.root + "/minerva/models").json()["failures"]
    assert failure["path"].endswith("broken.gguf")
    assert failure["reason"] == served.state.registry.failures()[Path(failure["path"])]
    assert "truncated" in failure["reason"]


def test_a_model_whose_id_has_slashes_and_colons_loads_and_unloads(served):
    loaded = httpx.post(served.root + "/minerva/models/load", json={"model": MODEL_ID}, timeout=120)
    assert loaded.status_code == 200, loaded.text
    body = loaded.json()
    assert body["loaded"] is True and served.state.pool.is_loaded(MODEL_ID)
    assert body["memory_bytes"] == served.state.pool.memory_bytes()[MODEL_ID] > 0
    assert 590 < body["expires_in_s"] <= 600
    unloaded = httpx.post(served.root + "/minerva/models/unload", json={"model": MODEL_ID}, timeout=60)
    assert unloaded.status_code == 200 and unloaded.json()["loaded"] is False
    assert not served.state.pool.is_loaded(MODEL_ID)
    assert unloaded.json()["memory_bytes"] is None and unloaded.json()["expires_in_s"] is None
    again = httpx.post(served.root + "/minerva/models/unload", json={"model": MODEL_ID})
    assert again.status_code == 200 and again.json()["loaded"] is False


def test_load_and_unload_errors_are_in_the_openai_envelope(served):
    missing = httpx.post(served.root + "/minerva/models/load", json={"model": "nope"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    assert missing.json()["error"]["param"] == "model"
    no_body = httpx.post(served.root + "/minerva/models/unload")
    assert no_body.status_code == 400 and no_body.json()["error"]["type"] == "invalid_request_error"
    extra = httpx.post(served.root + "/minerva/models/load", json={"model": MODEL_ID, "path": "/etc/passwd"})
    assert extra.status_code == 400 and extra.json()["error"]["type"] == "invalid_request_error"
    wrong_method = httpx.get(served.root + "/minerva/models/load")
    assert wrong_method.status_code == 405 and "error" in wrong_method.json()


def test_a_model_serving_a_request_is_not_unloaded(tmp_path):
    gate = threading.Event()
    loader = scripted_loader(lambda prompt, call: Script([b"hello"], gate=gate))
    with running_server(Settings(models_dirs=[tmp_path]), loader=loader) as server:
        root = f"http://127.0.0.1:{server.port}"
        body = {"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "hi"}]}
        answer: list[httpx.Response] = []
        request = threading.Thread(target=lambda: answer.append(
            httpx.post(server.base_url + "/chat/completions", json=body, timeout=60)))
        request.start()
        try:
            for _ in range(200):
                if server.state.pool.is_loaded("smollm2-135m-instruct") and loader.engines[0].calls:
                    break
                threading.Event().wait(0.02)
            busy = httpx.post(root + "/minerva/models/unload", json={"model": "smollm2-135m-instruct"})
            assert busy.status_code == 409 and "serving a request" in busy.json()["error"]["message"]
            assert server.state.pool.is_loaded("smollm2-135m-instruct")
        finally:
            gate.set()
            request.join(60)
        assert answer[0].status_code == 200
        idle = httpx.post(root + "/minerva/models/unload", json={"model": "smollm2-135m-instruct"})
        assert idle.status_code == 200 and idle.json()["loaded"] is False


def test_the_start_up_banner_names_the_web_page(tmp_path):
    from minerva.api.app import create_app
    from minerva.cli import BANNER_ROUTES, _serves, startup_banner

    app = create_app(Settings(models_dirs=[tmp_path]))
    paths = {path for method, path in BANNER_ROUTES if _serves(app, method, path)}
    assert "/" in paths
    banner = startup_banner("http://127.0.0.1:8000", paths, [], False)
    assert re.search(r"^  web page +http://127\.0\.0\.1:8000/$", banner, re.MULTILINE), banner
