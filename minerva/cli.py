"""The `minerva` command: serve | models | inspect | demo | opencode-config | claude-config | codex-config."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from minerva.core.errors import MinervaError
from minerva.settings import Settings, build_settings, parse_model_registration

logger = logging.getLogger("minerva")


def _add_model_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models-dir", action="append", type=Path, dest="models_dirs", metavar="DIR",
                        help="directory of model files (repeatable; default ~/.minerva/models)")
    parser.add_argument("--model", action="append", dest="model_flags", metavar="ID=PATH", default=[],
                        help="register one model file or directory (repeatable)")
    parser.add_argument("--config", type=Path, help="TOML config file")
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
    if args.no_default_model:
        overrides["include_default_model"] = False
    return build_settings(args.config, **overrides)


def _derive(path: Path) -> str:
    from minerva.registry import derive_model_id

    return derive_model_id(path)


FORCED_EXIT_CODE = 128 + signal.SIGINT  # what a shell reports for a process ended by Ctrl+C


def _graceful_server(config):
    """A uvicorn.Server whose SIGTERM/SIGINT drains in-flight requests (up to the config's graceful
    timeout) and then returns normally, so the process exits 0; a second SIGINT exits at once.

    Stock uvicorn re-raises the caught signal after draining, which would end the process by
    SIGTERM (status -15) rather than 0, and its forced exit still waits on the model's threads.
    """
    import uvicorn

    class GracefulServer(uvicorn.Server):
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
    logger.info("minerva serving on http://%s:%d/v1", settings.host, settings.port)
    grace = settings.shutdown_grace_s  # uvicorn annotates an int but waits any number of seconds
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                            timeout_graceful_shutdown=grace, access_log=False)  # type: ignore[arg-type]
    _graceful_server(config).run()
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
    for column in ("id", "format", "quant", "size", "params", "arch", "context", "kind", "template"):
        table.add_column(column, justify="right" if column in ("size", "params", "context") else "left")
    for model in models:
        info = model.info
        table.add_row(model.id, info.format, info.quantization or "-", f"{info.file_size_mb:,.1f} MB",
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
    """Print every header-derived fact about one model file or directory."""
    from dataclasses import asdict

    from minerva.formats.detect import read_model_info

    info = read_model_info(args.path)
    data = asdict(info)
    data["file_size_mb"] = info.file_size_mb
    data["has_chat_template"] = info.has_chat_template
    if args.json:
        print(json.dumps(data, indent=2, default=str))
        return 0
    from rich.table import Table

    table = Table(title=str(args.path), show_header=False)
    for key, value in data.items():
        if key == "chat_template" and value:
            value = f"{len(value)} characters"
        table.add_row(key, str(value))
    _console().print(table)
    return 0


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

    inspect = commands.add_parser("inspect", help="show the metadata of one model file or directory")
    inspect.add_argument("path", type=Path)
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
