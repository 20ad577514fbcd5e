"""The command line: serve, demo, activate, check, backfill, keys, outbox, systemd-unit."""
