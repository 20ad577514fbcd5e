"""Command line: ``serve``, ``demo``, ``bench``, ``activate``, ``check``, ``backfill``, ``keys``,
``systemd-unit``, ``outbox``, ``backup``, ``templates`` (``--help`` of each says more). The
environment is read here and nowhere else."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial

import trio

from tracker import config, logs
from tracker.errors import ConfigError, StatechartError, StoreError


def _settings(args: argparse.Namespace, *, warn: bool = True) -> config.Settings:
    path = args.config or os.environ.get("TRACKER_CONFIG")
    if not path:
        raise ConfigError(["no configuration: pass --config PATH or set TRACKER_CONFIG"])
    settings = config.load(path, os.environ)
    exposed = config.exposed_mode(path)
    if exposed is not None and warn:
        print(f"tracker: warning: {exposed}", file=sys.stderr)
    logs.redact(settings.uis.webhook_secret.reveal(), settings.uis.access_token.reveal(),
                settings.crm.api_key.reveal(), settings.crm.client_id.reveal())
    return settings


def _serve(args: argparse.Namespace) -> int:
    from tracker import service

    settings = _settings(args)
    logs.configure(settings.log.level, settings.log.format)
    trio.run(service.serve, settings)
    return 0


def _bench(args: argparse.Namespace) -> int:
    from tracker.devtools import bench

    logs.configure("WARNING", "text")
    trio.run(bench.run_bench, args.quick, print, tuple(args.phase or bench.PHASES))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from tracker.devtools import demo

    logs.configure("INFO", "text")
    trio.run(demo.run_demo, args.listen, args.calls_per_minute, args.database)
    return 0


def _activate(args: argparse.Namespace) -> int:
    from tracker.cli import activation

    settings = _settings(args)
    logs.configure(settings.log.level, settings.log.format)
    return trio.run(activation.activate, settings, print)


def _check(args: argparse.Namespace) -> int:
    from tracker.cli import check

    # No logs.configure: the table is the output; warnings still reach stderr.
    try:
        settings = _settings(args, warn=False)
    except ConfigError as exc:
        print(check.render(check.config_findings(exc.problems)))
        return 2
    path = args.config or os.environ.get("TRACKER_CONFIG")
    return trio.run(partial(check.check, settings, print, config_path=path))


def _templates(args: argparse.Namespace) -> int:
    from tracker.core import catalogue
    from tracker.core.notifications import WEBHOOK_PREFIX

    base = "https://tracker.example.com"
    secret = "<uis.webhook_secret>"
    if args.config or os.environ.get("TRACKER_CONFIG"):
        settings = _settings(args)
        base = settings.server.public_url.rstrip("/")
    print(f"Notification URL (method POST, JSON body): {base}{WEBHOOK_PREFIX}{secret}\n")
    for item in catalogue.NOTIFICATIONS:
        print(f"== {item.event}: {item.ui_name_en} / {item.ui_name_ru}")
        print(catalogue.template_body(item.event))
        print()
    return 0


def _backfill(args: argparse.Namespace) -> int:
    from tracker.cli import backfill

    return _run_period("tracker backfill", backfill.run_backfill, args)


def _deals(args: argparse.Namespace) -> int:
    from tracker.cli import deals

    return _run_period("tracker deals backfill", deals.run_backfill, args)


def _period_arguments(parser: argparse.ArgumentParser, zone: str, no_deliver: str) -> None:
    """The options of a command that reads a past period (``_run_period``)."""
    parser.add_argument("--from", dest="date_from", required=True, metavar="TIME",
                        help=f'"YYYY-MM-DD HH:MM:SS" or a date, in {zone}')
    parser.add_argument("--till", dest="date_till", required=True, metavar="TIME",
                        help='"YYYY-MM-DD HH:MM:SS" (a bare date means its last second)')
    parser.add_argument("--config", help="TOML configuration (or env TRACKER_CONFIG)")
    parser.add_argument("--progress", action="store_true",
                        help="show the progress line even when stderr is not a terminal")
    parser.add_argument("--no-deliver", action="store_true", help=no_deliver)


def _run_period(name: str, run: Callable[..., Awaitable[int]], args: argparse.Namespace) -> int:
    """A command that reads a past period (``--from``/``--till``) with a progress line."""
    from tracker.core.windows import parse_moment

    try:
        date_from = parse_moment(args.date_from)
        date_till = parse_moment(args.date_till, end_of_day=True)
    except ValueError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
    if date_till < date_from:
        print(f"{name}: --till is before --from", file=sys.stderr)
        return 2
    settings = _settings(args)
    # One INFO line per created call would tear the progress line apart: warnings only.
    level = settings.log.level if settings.log.level in ("DEBUG", "ERROR") else "WARNING"
    logs.configure(level, settings.log.format)
    return trio.run(partial(run, settings, date_from, date_till,
                            deliver=False if args.no_deliver else None,
                            progress=args.progress or sys.stderr.isatty()))


def _keys(args: argparse.Namespace) -> int:
    from tracker.db import keys
    from tracker.db.store import open_store
    from tracker.errors import KeyProblem

    store = open_store(_settings(args), check=False, seed_employees=False)
    try:
        if args.action == "create":
            key, token = keys.create(store, args.name, args.rights)
            print(f"created key {key.name!r} (id {key.id}) with {', '.join(sorted(key.rights))}; "
                  "it is shown only now:", file=sys.stderr)
            print(token)
        elif args.action == "list":
            print(keys.table(keys.all_keys(store)))
        else:
            key = keys.revoke(store, args.name)
            print(f"revoked key {key.name!r} (id {key.id})")
    except KeyProblem as exc:
        print(f"tracker keys: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    return 0


def _systemd_unit(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tracker.cli import systemd

    try:
        text = systemd.unit(python=sys.executable, config=os.path.abspath(args.config),
                            workdir=str(Path(__file__).resolve().parents[2]), user=args.user,
                            state_dir=args.state_dir)
    except ValueError as exc:
        print(f"tracker systemd-unit: {exc}", file=sys.stderr)
        return 2
    print(text, end="")
    return 0


def _outbox(args: argparse.Namespace) -> int:
    from tracker.db import maintenance
    from tracker.db.store import open_store
    from tracker.delivery.dispatcher import EXTERNAL_CHECK_SECONDS

    store = open_store(_settings(args), check=False, seed_employees=False, must_exist=True)
    try:
        if args.action == "list":
            print(maintenance.format_dead_letters(maintenance.dead_letters(store)))
            return 0
        if not args.all and not args.ids:
            print("tracker outbox retry: give dead letter ids or --all", file=sys.stderr)
            return 2
        result = store.retry_dead(None if args.all else args.ids, time.time())
    finally:
        store.close()
    for row_id, status in result.refused.items():
        print(f"#{row_id} is {status}, not a dead letter: not retried", file=sys.stderr)
    if result.requeued:
        print(f"re-queued {len(result.requeued)} dead letter(s): "
              + " ".join(f"#{i}" for i in result.requeued)
              + f"; a running daemon picks them up within {EXTERNAL_CHECK_SECONDS:g} s")
    elif not result.refused:
        print("no dead letters")
    return 1 if result.refused else 0


def _backup(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tracker.db import maintenance

    settings = _settings(args)
    done = maintenance.backup(settings.database.path, Path(args.path))
    print(f"backed up {settings.database.path} to {done.path} ({done.bytes} bytes, "
          f"{done.seconds:.1f} s)")
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
    bench.add_argument("--phase", action="append", choices=("ingest", "popup", "memory",
                       "backlog", "startup", "crmwork"), help="run only this phase (repeatable; "
                       "ingest includes the ceiling)")
    bench.set_defaults(func=_bench)

    activate = commands.add_parser("activate", help="register the telephony in retailCRM")
    activate.add_argument("--config", help="TOML configuration (or env TRACKER_CONFIG)")
    activate.set_defaults(func=_activate)

    verify = commands.add_parser("check", help="check the config, UIS, retailCRM and the mapping")
    verify.add_argument("--config", help="TOML configuration (or env TRACKER_CONFIG)")
    verify.set_defaults(func=_check)

    backfill = commands.add_parser(
        "backfill", help="create and upload the calls of a period that tracker never heard of")
    _period_arguments(backfill, "the account time zone",
                      "only store the calls; the daemon uploads them")
    backfill.set_defaults(func=_backfill)

    deal_commands = commands.add_parser(
        "deals", help="retailCRM orders in UIS's end-to-end analytics")
    deal_actions = deal_commands.add_subparsers(dest="deals_action", required=True)
    deal_backfill = deal_actions.add_parser(
        "backfill", help="load the orders of a past period into UIS as deals (resumable)")
    _period_arguments(deal_backfill, "retailCRM's account time",
                      "only queue the deals (a running daemon delivers them)")
    deal_backfill.set_defaults(func=_deals)

    key_commands = commands.add_parser("keys", help="create, list and revoke admin API keys")
    key_actions = key_commands.add_subparsers(dest="action", required=True)
    create = key_actions.add_parser("create", help="create a key and print it (only this once)")
    create.add_argument("--name", required=True, help="who or what uses the key")
    create.add_argument("--rights", required=True,
                        help="comma-separated: calls:read, outbox:write, employees:write, "
                             "log:read, admin")
    key_actions.add_parser("list", help="list keys (never the keys themselves)")
    revoke = key_actions.add_parser("revoke", help="revoke a key by name or id")
    revoke.add_argument("name", help="the key's name (or id)")
    for sub in key_actions.choices.values():
        sub.add_argument("--config", help="TOML configuration (or env TRACKER_CONFIG)")
    key_commands.set_defaults(func=_keys)

    unit = commands.add_parser("systemd-unit", help="print a systemd unit for this install")
    unit.add_argument("--config", default="/etc/tracker/tracker.toml",
                      help="the configuration the service reads")
    unit.add_argument("--user", default="tracker", help="the user the service runs as")
    unit.add_argument("--state-dir", default="/var/lib/tracker",
                      help="the database directory (under /var/lib/)")
    unit.set_defaults(func=_systemd_unit)

    outbox = commands.add_parser("outbox", help="list or retry dead letters (safe while serving)")
    outbox_actions = outbox.add_subparsers(dest="action", required=True)
    outbox_actions.add_parser("list", help="list the dead letters")
    retry = outbox_actions.add_parser("retry", help="queue dead letters again")
    retry.add_argument("ids", nargs="*", type=int, metavar="ID", help="outbox row ids")
    retry.add_argument("--all", action="store_true", help="every dead letter")
    for sub in outbox_actions.choices.values():
        sub.add_argument("--config", help="TOML configuration (or env TRACKER_CONFIG)")
    outbox.set_defaults(func=_outbox)

    backup = commands.add_parser("backup", help="copy the database while the daemon runs")
    backup.add_argument("path", help="the new file (must not exist)")
    backup.add_argument("--config", help="TOML configuration (or env TRACKER_CONFIG)")
    backup.set_defaults(func=_backup)

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
