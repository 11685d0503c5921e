"""The ``smallfirst`` command: ``serve``, ``ingest``, ``calibrate``, ``eval``, ``loadtest`` and ``distill``."""

from __future__ import annotations

import argparse
import sys

from smallfirst.ingest import cli as ingest_cli
from smallfirst.service.tools import calibrate_folder
from smallfirst.service.tools import eval as evaluation
from smallfirst.service.distill import command as distill_command
from smallfirst.service.tools.loadtest import cli as loadtest_cli
from smallfirst.errors import SmallfirstError
from smallfirst.settings import Settings, SettingsError, add_arguments, from_args
from smallfirst.retrieval.store import open_local_client


def _check_store_free(settings: Settings) -> None:
    """Fail fast, with a clear message, when another process holds the embedded store."""
    if not settings.qdrant_url:
        open_local_client(settings.qdrant_path).close()


def _check_adapter(settings: Settings) -> None:
    """Fail fast when the configured adapter cannot be served (missing, refused, another base model)."""
    if settings.adapter_path is not None:
        from pathlib import Path

        from smallfirst.service.distill.adapter import load_adapter
        from smallfirst.service.llm.loading import bundled_model_path

        load_adapter(settings.adapter_path, Path(settings.model_path) if settings.model_path else bundled_model_path())


def serve(args: argparse.Namespace) -> int:
    """Run the service until interrupted."""
    import uvicorn

    from smallfirst.service.server import logs
    from smallfirst.service.server.app import create_app
    from smallfirst.service.server.security import is_loopback
    from smallfirst.service.server.http import header_timeout_protocol

    try:
        settings = from_args(args)
        if not settings.require_token and not is_loopback(settings.host):
            raise SettingsError(f"refusing to listen on {settings.host} without a token: "
                                "turn SMALLFIRST_REQUIRE_TOKEN back on (a token is generated when none is set)")
        _check_store_free(settings)
        _check_adapter(settings)
    except SettingsError as exc:
        print(f"smallfirst serve: {exc}", file=sys.stderr)
        return 2
    except SmallfirstError as exc:
        print(f"smallfirst serve: {exc.message}", file=sys.stderr)
        return 1
    log_config = logs.configure(settings.log_level, settings.log_format)
    print(f"smallfirst: serving on http://{settings.host}:{settings.port}", file=sys.stderr)
    uvicorn.run(
        create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level.lower(),
        log_config=log_config,
        ws_max_size=settings.max_frame_bytes * 4, ws_ping_interval=20, ws_ping_timeout=20,
        timeout_graceful_shutdown=5, limit_concurrency=settings.http_concurrency,
        timeout_keep_alive=max(1, round(settings.keep_alive_timeout_s)), h11_max_incomplete_event_size=16_384,
        http=header_timeout_protocol(settings.header_timeout_s),
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smallfirst",
        description="Streaming RAG service: a small local model first, a large one only when needed. "
        "Every option can also be set with its SMALLFIRST_* environment variable.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve_parser = commands.add_parser("serve", help="Serve the widget, the API and the WebSocket.",
                                       description="Serve the widget, the API and the WebSocket.")
    add_arguments(serve_parser)
    serve_parser.set_defaults(handler=serve)
    ingest_parser = commands.add_parser("ingest", help="Embed a folder of documents into the store.",
                                        description="Embed a folder of documents into the store.")
    ingest_cli.configure_parser(ingest_parser)
    ingest_parser.set_defaults(handler=ingest_cli.run)
    calibrate_parser = commands.add_parser("calibrate", help="Calibrate the grounding threshold of a document folder (no labels needed).",
                                           description="Choose the grounding threshold of a document folder from the folder "
                                                       "alone: pseudo-questions made from its own text against a bank of "
                                                       "off-topic questions. With --data, also report how labelled "
                                                       "questions fall on either side.")
    calibrate_folder.configure_parser(calibrate_parser)
    calibrate_parser.set_defaults(handler=calibrate_folder.run)
    eval_parser = commands.add_parser("eval", help="Evaluate tiers, routing and answers on a QA file.",
                                      description="Evaluate tiers, routing and answers on a QA file, through the WebSocket.")
    evaluation.configure_parser(eval_parser)
    eval_parser.set_defaults(handler=evaluation.run)
    load_parser = commands.add_parser("loadtest", help="Measure latency under load as users feel it.",
                                      description="Drive the WebSocket protocol with many clients and report latency "
                                      "(time to sources, first token, between tokens, end to end) as users feel it.")
    loadtest_cli.configure_parser(load_parser)
    load_parser.set_defaults(handler=loadtest_cli.run)
    distill_parser = commands.add_parser(
        "distill", help="Train a LoRA adapter for the small model on logged large-tier answers.",
        description="Turn distillation logs (SMALLFIRST_DISTILL_LOG) into a LoRA adapter for the small model, "
        "evaluate it against the base model, and keep it only if it answers held-out questions more like the "
        "teacher and loses no accuracy or check precision on the --eval QA files. Needs the "
        "'distill' extra; training uses every core, so run it when traffic is low or on another machine.")
    distill_command.configure_parser(distill_parser)
    distill_parser.set_defaults(handler=distill_command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
