"""The core without I/O: notifications, the statechart, the call model, payloads, queries."""
