"""The HTTP API. Never imports torch: it talks to workers through Redis, by task name."""
