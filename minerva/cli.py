"""The `minerva` command: serve | models | inspect | jobs | demo | opencode-config | claude-config | codex-config."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shlex
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from minerva.core.errors import InvalidRequestError, MinervaError
from minerva.engine.upstream.config import parse_upstream_flag
from minerva.settings import Settings, build_settings, parse_model_registration

if TYPE_CHECKING:
    from minerva.registry import ModelRegistry, RegisteredModel

logger = logging.getLogger("minerva")


def _add_model_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models-dir", action="append", type=Path, dest="models_dirs", metavar="DIR",
                        help="directory of model files (repeatable; default ~/.minerva/models)")
    parser.add_argument("--model", action="append", dest="model_flags", metavar="ID=PATH", default=[],
                        help="register one model file or directory (repeatable)")
    parser.add_argument("--config", type=Path, help="TOML config file")
    parser.add_argument("--upstream", action="append", dest="upstream_flags", metavar="NAME=URL[,URL]", default=[],
                        help="serve the models of another server (llama-server, minerva; replicas comma-separated)")
    parser.add_argument("--no-default-model", action="store_true",
                        help="do not serve the embedded SmolLM2 default model")


def _settings_from(args: argparse.Namespace, **extra) -> Settings:
    models: dict[str, Path] = {}
    for flag in args.model_flags:
        model_id, path = parse_model_registration(flag)
        models[model_id or _derive(path)] = path
    overrides = dict(extra)
    if args.models_dirs:
        overrides["models_dirs"] = args.models_dirs
    if models:
        overrides["models"] = models
    upstreams = dict(parse_upstream_flag(flag) for flag in getattr(args, "upstream_flags", []))
    if upstreams:
        overrides["upstreams"] = {name: {"urls": urls} for name, urls in upstreams.items()}
    if args.no_default_model:
        overrides["include_default_model"] = False
    return build_settings(args.config, **overrides)


def _derive(path: Path) -> str:
    from minerva.registry import derive_model_id

    return derive_model_id(path)


FORCED_EXIT_CODE = 128 + signal.SIGINT  # what a shell reports for a process ended by Ctrl+C


def _graceful_server(config, on_listening: Callable[[int], None] | None = None):
    """A uvicorn.Server whose SIGTERM/SIGINT drains in-flight requests (up to the config's graceful
    timeout) and then returns normally, so the process exits 0; a second SIGINT exits at once.
    `on_listening(port)` runs once the socket listens (after the app's start-up completed).

    Stock uvicorn re-raises the caught signal after draining, which would end the process by
    SIGTERM (status -15) rather than 0, and its forced exit still waits on the model's threads.
    """
    import uvicorn

    class GracefulServer(uvicorn.Server):
        async def startup(self, sockets=None) -> None:
            await super().startup(sockets=sockets)
            if self.started and on_listening is not None:
                bound = [sock.getsockname() for server in self.servers for sock in server.sockets]
                on_listening(bound[0][1] if bound else self.config.port)

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            handled = (signal.SIGINT, signal.SIGTERM)
            original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
            try:
                yield
            finally:
                for sig, handler in original.items():
                    signal.signal(sig, handler)

        def handle_exit(self, sig: int, frame) -> None:
            if self.should_exit and sig == signal.SIGINT:
                logger.warning("second interrupt: exiting now without finishing requests")
                logging.shutdown()
                os._exit(FORCED_EXIT_CODE)
            if not self.should_exit:
                logger.info("%s received: no new connections; finishing in-flight requests for up to %.0f s "
                            "(Ctrl+C again to quit now)", signal.Signals(sig).name,
                            self.config.timeout_graceful_shutdown or 0)
            self.should_exit = True

    return GracefulServer(config)


def browsable_root(host: str, port: int) -> str:
    """The server's root URL as a user opens it: a wildcard bind address becomes localhost."""
    if host in ("0.0.0.0", "::", ""):
        host = "localhost"
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


CONFIG_COMMANDS = (("opencode-config", "/v1"), ("claude-config", ""), ("codex-config", "/v1"))
"""The client-config commands and the path their --base-url takes after the server's root."""


BANNER_ROUTES = (("GET", "/"), ("POST", "/v1/messages"), ("GET", "/api/tags"))
"""The routes whose presence the banner reports: the web page, the Anthropic API, the Ollama API."""


def _serves(app, method: str, path: str) -> bool:
    """Whether the app has a route for this request."""
    from starlette.routing import Match

    scope = {"type": "http", "method": method, "path": path, "root_path": "", "query_string": b"", "headers": []}
    return any(route.matches(scope)[0] is Match.FULL for route in app.router.routes)


def startup_banner(root: str, paths: set[str], model_flags: list[str], name_base_url: bool) -> str:
    """What a user needs once the server listens: the URLs that exist on it and the client-config commands."""
    urls = []
    if "/" in paths:
        urls.append(("web page", f"{root}/"))
    urls.append(("OpenAI base URL", f"{root}/v1"))
    if "/v1/messages" in paths:
        urls.append(("Anthropic base URL", f"{root}  (ANTHROPIC_BASE_URL: the root, without /v1)"))
    if "/api/tags" in paths:
        urls.append(("Ollama host", f"{root}  (OLLAMA_HOST)"))
    width = max(len(label) for label, _ in urls)
    lines = ["minerva is listening:", *(f"  {label:<{width}}  {url}" for label, url in urls), "client configs:"]
    for name, suffix in CONFIG_COMMANDS:
        flags = [*model_flags, *(["--base-url", root + suffix] if name_base_url else [])]
        lines.append("  " + shlex.join(["minerva", name, *flags]))
    return "\n".join(lines)


def _model_flags(args: argparse.Namespace) -> list[str]:
    """The serve flags that choose its models, so a *-config command describes the same ones."""
    flags: list[str] = []
    if args.config:
        flags += ["--config", str(args.config)]
    for directory in args.models_dirs or ():
        flags += ["--models-dir", str(directory)]
    for model in args.model_flags:
        flags += ["--model", model]
    if args.no_default_model:
        flags.append("--no-default-model")
    return flags


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the HTTP server."""
    import uvicorn

    from minerva.api.app import create_app

    settings = _settings_from(
        args, host=args.host, port=args.port, n_ctx=args.ctx_size, n_slots=args.slots,
        n_threads=args.threads, api_keys=args.api_keys or None, prompt_cache_mb=args.prompt_cache_mb,
    )
    if settings.host not in ("127.0.0.1", "localhost", "::1") and not settings.api_keys:
        logger.warning("binding %s without an API key: anyone who can reach this address can use the models "
                       "(set --api-key or MINERVA_API_KEYS)", settings.host)
    app = create_app(settings)
    paths = {path for method, path in BANNER_ROUTES if _serves(app, method, path)}

    default_root = browsable_root(Settings.model_fields["host"].default, Settings.model_fields["port"].default)

    def announce(port: int) -> None:
        root = browsable_root(settings.host, port)
        logger.info("%s", startup_banner(root, paths, _model_flags(args), name_base_url=root != default_root))

    grace = settings.shutdown_grace_s  # uvicorn annotates an int but waits any number of seconds
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                            timeout_graceful_shutdown=grace, access_log=False)  # type: ignore[arg-type]
    _graceful_server(config, announce).run()
    logger.info("minerva stopped")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    """Print the models the registry finds."""
    from rich.table import Table

    from minerva.api.app import build_registry

    registry = build_registry(_settings_from(args))
    models = registry.list()
    if args.json:
        from minerva.dialects.openai.models import model_list

        print(json.dumps(model_list(models, set()), indent=2))
        return 0
    table = Table(title=f"{len(models)} model(s)")
    for column in ("id", "source", "format", "quant", "size", "params", "arch", "context", "kind", "template"):
        table.add_column(column, justify="right" if column in ("size", "params", "context") else "left")
    for model in models:
        info = model.info
        table.add_row(model.id, model.source, info.format, info.quantization or "-", f"{info.file_size_mb:,.1f} MB",
                      _human_count(info.parameter_count), info.architecture or "-",
                      f"{info.context_length:,}" if info.context_length else "-", info.kind,
                      "yes" if info.has_chat_template else "no")
    console = _console()
    console.print(table)
    for path, reason in registry.failures().items():
        console.print(f"[yellow]skipped[/yellow] {path}: {reason}")
    return 0


def _console():
    """A rich console; when output is not a terminal, wide enough that ids and paths stay whole."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=200)


def _human_count(count: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= size:
            return f"{count / size:.1f}{unit}"
    return str(count)


def cmd_inspect(args: argparse.Namespace) -> int:
    """Print every header-derived fact about one model file or directory (or registered model id)."""
    from dataclasses import asdict

    from minerva.api.app import build_registry
    from minerva.discovery.describe import provenance
    from minerva.formats.detect import read_model_info

    model = registered_model(build_registry(_settings_from(args)), args.path)
    info = model.info if model is not None else read_model_info(Path(args.path).expanduser())
    data = asdict(info)
    data["file_size_mb"] = info.file_size_mb
    data["has_chat_template"] = info.has_chat_template
    if model is not None:
        data = {"id": model.id, "source": model.source, **data}
        if model.discovered is not None:
            data.update(provenance(model.discovered, info.has_chat_template))
    if args.json:
        print(json.dumps(data, indent=2, default=str))
        return 0
    from rich.table import Table
    from rich.text import Text

    table = Table(title=Text(str(args.path)), show_header=False)
    for key, value in data.items():
        if key == "chat_template" and value:
            value = f"{len(value)} characters"
        table.add_row(key, Text(display_value(value)))  # Text: a path's brackets are not markup
    _console().print(table)
    return 0


def registered_model(registry: ModelRegistry, target: str) -> RegisteredModel | None:
    """The registered model with this id, or whose file or directory this path is; None when none is."""
    models = registry.list()
    by_id = {model.id: model for model in models}
    if target in by_id:
        return by_id[target]
    path = Path(target).expanduser()
    if not path.exists():
        return None
    real = os.path.realpath(path)
    return next((m for m in models if real in (os.path.realpath(m.info.path),
                                              os.path.realpath(m.discovered.origin) if m.discovered else None)), None)


def display_value(value: object) -> str:
    """A field as a person reads it: paths as paths, one item per line, key-value pairs as `key: value`."""
    if value is None:
        return "-"
    if isinstance(value, (tuple, list)):
        if not value:
            return "-"
        return "\n".join(f"{item[0]}: {display_value(item[1])}" if isinstance(item, (tuple, list)) and len(item) == 2
                         else display_value(item) for item in value)
    return str(value)


def cmd_opencode_config(args: argparse.Namespace) -> int:
    """Print an OpenCode provider block for the registered models."""
    from minerva.api.app import build_registry
    from minerva.client_configs import opencode_config

    settings = _settings_from(args)
    base_url = args.base_url or f"http://{settings.host}:{settings.port}/v1"
    print(json.dumps(opencode_config(build_registry(settings).list(), base_url), indent=2))
    return 0


def cmd_claude_config(args: argparse.Namespace) -> int:
    """Print the environment Claude Code needs to run on the registered models."""
    from minerva.api.app import build_registry
    from minerva.client_configs import claude_code_env

    settings = _settings_from(args)
    root = args.base_url or f"http://{settings.host}:{settings.port}"
    for name, value in claude_code_env(build_registry(settings).list(), root).items():
        print(f"export {name}={value}")
    return 0


def cmd_codex_config(args: argparse.Namespace) -> int:
    """Print a Codex config.toml for the registered models."""
    from minerva.api.app import build_registry
    from minerva.client_configs import codex_config_toml

    settings = _settings_from(args)
    base_url = args.base_url or f"http://{settings.host}:{settings.port}/v1"
    print("# ~/.codex/config.toml (then: export MINERVA_KEY=sk-local)")
    print(codex_config_toml(build_registry(settings).list(), base_url), end="")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Show detection, the OpenAI response format and the multi-model registry in one run."""
    from minerva.demo import run_demo

    return run_demo(_settings_from(args))


def cmd_jobs(args: argparse.Namespace) -> int:
    """List fine-tuning jobs, or watch one's progress."""
    from minerva.finetune.console import run_jobs_command

    if args.action == "watch" and not args.job_id:
        raise InvalidRequestError("minerva jobs watch: name the job to watch (minerva jobs lists them)")
    data_dir = args.data_dir.expanduser() if args.data_dir else Settings().data_dir
    return run_jobs_command(data_dir, args.job_id if args.action == "watch" else None, _console())


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `minerva` command."""
    parser = argparse.ArgumentParser(prog="minerva", description="A local OpenAI-compatible model server.")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve the OpenAI-compatible API")
    _add_model_flags(serve)
    serve.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (default 8000)")
    serve.add_argument("--ctx-size", type=int, default=None, help="context tokens per sequence")
    serve.add_argument("--slots", type=int, default=None, help="concurrent sequences per model (default 4)")
    serve.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    serve.add_argument("--prompt-cache-mb", type=int, default=None,
                       help="host memory per GGUF model for evicted slots' KV cells (default 2048, 0: off)")
    serve.add_argument("--api-key", action="append", dest="api_keys", default=[], help="require this key")
    serve.set_defaults(func=cmd_serve)

    models = commands.add_parser("models", help="list the models the registry finds")
    _add_model_flags(models)
    models.add_argument("--json", action="store_true")
    models.set_defaults(func=cmd_models)

    inspect = commands.add_parser("inspect", help="show the metadata of one model file or directory, or model id")
    _add_model_flags(inspect)
    inspect.add_argument("path", help="a model file or directory, or the id of a registered model")
    inspect.add_argument("--json", action="store_true")
    inspect.set_defaults(func=cmd_inspect)

    demo = commands.add_parser("demo", help="one-run demonstration of detection, API format and registry")
    _add_model_flags(demo)
    demo.set_defaults(func=cmd_demo)

    opencode = commands.add_parser("opencode-config", help="print an OpenCode provider config for these models")
    _add_model_flags(opencode)
    opencode.add_argument("--base-url", default=None)
    opencode.set_defaults(func=cmd_opencode_config)

    claude = commands.add_parser("claude-config", help="print the environment for Claude Code on these models")
    _add_model_flags(claude)
    claude.add_argument("--base-url", default=None, help="the server root (Claude Code appends /v1/messages)")
    claude.set_defaults(func=cmd_claude_config)

    jobs = commands.add_parser("jobs", help="list fine-tuning jobs; `jobs watch ID` shows one's progress")
    jobs.add_argument("action", nargs="?", choices=["watch"], help="watch one job until it finishes")
    jobs.add_argument("job_id", nargs="?", help="the job to watch")
    jobs.add_argument("--data-dir", type=Path, default=None, help="the server's data directory (default ~/.minerva)")
    jobs.set_defaults(func=cmd_jobs)

    codex = commands.add_parser("codex-config", help="print a Codex config.toml for these models")
    _add_model_flags(codex)
    codex.add_argument("--base-url", default=None)
    codex.set_defaults(func=cmd_codex_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `minerva` command."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except MinervaError as exc:
        logger.error("%s", exc.message)
        return 2


if __name__ == "__main__":
    sys.exit(main())
