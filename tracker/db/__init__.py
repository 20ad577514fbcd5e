"""The only home of SQL: the store, migrations, outbox rows, keys, request log, page queries."""
