"""A contract suite for cache maps and remote tiers: point it at yours, run pytest.

Every guarantee a :class:`~loadercache.DataLoader` relies on from its cache
map is a test here.  Subclass the contract for what your backend is, tell it
how to make one, and pytest runs the lot::

    from loadercache.testing import CacheMapContract

    class TestMyCacheMap(CacheMapContract):
        def make_cache_map(self):
            return MyCacheMap(maxsize=1000)

A map that also implements :class:`~loadercache.RemoteTier` (``get_many``,
``set_many``, ``discard``) subclasses :class:`RemoteTierContract` instead,
which runs every cache map test too.  Its ``make_cache_map`` returns a new map
(one request's) over storage that every map of the same test shares, as the
processes of a service share one Redis: what one map writes, another reads.

The tests are plain methods, not coroutines: each runs in an event loop of its
own (:meth:`CacheMapContract.run`), bounded by ``timeout`` seconds, so no
async plugin is needed and none is in the way.  Optional hooks
(:meth:`~CacheMapContract.setup_backend`, ``teardown_backend``, ``settle``,
``fail_tier``, ``heal_tier``) run inside that loop; a test that needs a hook
your class does not implement is skipped, saying which.
"""

from __future__ import annotations

from loadercache.testing._cache_map import CacheMapContract
from loadercache.testing._remote_tier import RemoteTierContract
from loadercache.testing._support import BatchRecorder

__all__ = ["BatchRecorder", "CacheMapContract", "RemoteTierContract"]
