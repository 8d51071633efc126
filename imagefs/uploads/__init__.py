"""Uploads: files whose written bytes stream into the engine (load, import, build)."""
