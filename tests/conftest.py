"""Shared fixtures: the real built-in corpus (fetched once per machine into the user's cache)."""
import pytest

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def builtin_cache():
    """The fetched built-in corpus: `ltnb data fetch` into the default cache (idempotent, ~5 s once)."""
    from ltnb import corpus, paths

    corpus.fetch(log=lambda *_: None)
    return paths.cache_dir()
