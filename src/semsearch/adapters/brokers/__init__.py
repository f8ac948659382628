"""Message broker adapters: one EventSource per broker, each importing its client lazily."""
