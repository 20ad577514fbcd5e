"""The outbox: dispatcher, handlers, batching, busy detection."""
