"""Command line: ``serve``, ``demo``, ``activate``. The environment is read here and nowhere else."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import trio

from . import config, logs
from .errors import ConfigError, StatechartError, StoreError


def _settings(args: argparse.Namespace) -> config.Settings:
    path = args.config or os.environ.get("TRACKER_CONFIG")
    if not path:
        raise ConfigError(["no configuration: pass --config PATH or set TRACKER_CONFIG"])
    settings = config.load(path, os.environ)
    logs.redact(settings.uis.webhook_secret.reveal(), settings.uis.access_token.reveal(),
                settings.crm.api_key.reveal(), settings.crm.client_id.reveal())
    return settings


def _serve(args: argparse.Namespace) -> int:
    from . import service

    settings = _settings(args)
    logs.configure(settings.log.level, settings.log.format)
    trio.run(service.serve, settings)
    return 0


def _bench(args: argparse.Namespace) -> int:
    from . import bench

    logs.configure("WARNING", "text")
    trio.run(bench.run_bench, args.quick)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from . import demo

    logs.configure("INFO", "text")
    trio.run(demo.run_demo, args.listen, args.calls_per_minute, args.database)
    return 0


def _activate(args: argparse.Namespace) -> int:
    from . import activation

    settings = _settings(args)
    logs.configure(settings.log.level, settings.log.format)
    return trio.run(activation.activate, settings, print)


def _templates(args: argparse.Namespace) -> int:
    from . import templates

    base = "https://tracker.example.com"
    secret = "<uis.webhook_secret>"
    if args.config or os.environ.get("TRACKER_CONFIG"):
        settings = _settings(args)
        base = settings.server.public_url.rstrip("/")
    print(f"Notification URL (method POST, JSON body): {base}/webhooks/uis/{secret}\n")
    for item in templates.NOTIFICATIONS:
        print(f"== {item.event}: {item.ui_name_en} / {item.ui_name_ru}")
        print(templates.template_body(item.event))
        print()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tracker", description="UIS ↔ retailCRM connector")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the daemon")
    serve.add_argument("--config", help="TOML configuration (or env TRACKER_CONFIG)")
    serve.set_defaults(func=_serve)

    demo = commands.add_parser("demo", help="run the daemon with built-in simulators")
    demo.add_argument("--listen", default="127.0.0.1:8080", help="where the daemon listens")
    demo.add_argument("--calls-per-minute", type=float, default=20.0)
    demo.add_argument("--database", default=None, help="database file (default: a temp dir)")
    demo.set_defaults(func=_demo)

    bench = commands.add_parser("bench", help="measure throughput, latency, memory, start-up")
    bench.add_argument("--quick", action="store_true", help="a small run that takes seconds")
    bench.set_defaults(func=_bench)

    activate = commands.add_parser("activate", help="register the telephony in retailCRM")
    activate.add_argument("--config", help="TOML configuration (or env TRACKER_CONFIG)")
    activate.set_defaults(func=_activate)

    show = commands.add_parser("templates", help="print the UIS notification templates to paste")
    show.add_argument("--config", help="TOML configuration, for the public URL")
    show.set_defaults(func=_templates)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``run.py`` and the ``tracker`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"tracker: {exc}", file=sys.stderr)
        return 2
    except (StatechartError, StoreError) as exc:
        print(f"tracker: {exc}", file=sys.stderr)
        return 3
    except OSError as exc:
        print(f"tracker: {exc}", file=sys.stderr)
        return 4
    except KeyboardInterrupt:
        return 130
