"""The write path for UIS notifications: ingest and the group-commit batcher."""
