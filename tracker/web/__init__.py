"""The HTTP edge: the app and its routes, the webhook, the guard, API, status page."""
