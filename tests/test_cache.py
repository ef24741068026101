"""bpjax.train.cache: fit's compiled programs kept between calls, least recently used dropped."""

from bpjax.train import cache


def test_cached_builds_once_per_key_drops_the_least_recent_and_builds_unhashable_keys_anew(monkeypatch):
    monkeypatch.setattr(cache, "_CACHE", type(cache._CACHE)())
    monkeypatch.setattr(cache, "CACHE_SIZE", 2)
    built = []

    def build(name):
        return lambda: built.append(name) or name

    assert cache.cached("a", build("a")) == "a" and cache.cached("a", build("a2")) == "a"  # kept
    cache.cached("b", build("b"))
    cache.cached("a", build("a3"))  # "a" used again: "b" is now the least recent
    cache.cached("c", build("c"))  # over the size: "b" dropped
    assert list(cache._CACHE) == ["a", "c"]
    assert cache.cached(["unhashable"], build("u1")) == "u1" and cache.cached(["unhashable"], build("u2")) == "u2"
    assert built == ["a", "b", "c", "u1", "u2"]
    cache.clear_cache()
    assert not cache._CACHE
