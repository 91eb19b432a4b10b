"""One module per command; each exposes ``register(app)`` and stays thin: parse, call, render."""
