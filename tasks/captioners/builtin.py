"""The built-in captioners (each registers on import)."""
from mapcap.tasks.captioners import clipcap, coca, hf, retrieval  # noqa: F401
