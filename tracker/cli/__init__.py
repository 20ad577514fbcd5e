"""The command line (``main``: serve, demo, bench, activate, check, backfill, keys, outbox,
backup, systemd-unit, templates) and what its commands do beyond the daemon."""
