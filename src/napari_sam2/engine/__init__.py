"""The tracking engine: frame streaming, feature caching and the tracking session (no Qt here)."""
