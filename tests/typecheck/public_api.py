"""A user's module that touches every public name; type-checked, never run.

``tests/test_typing.py`` copies it out of the repository and checks it with
``mypy --strict`` and ``pyright --strict``, as a user's editor would: every
``assert_type`` must hold, and every line marked with an ignore comment must
still be an error (both checkers report an ignore that is no longer needed),
so a mistyped argument keeps being caught.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import (
    Any,
    Awaitable,
    Callable,
    Dict,
    List,
    MutableMapping,
    Optional,
    Sequence,
    Tuple,
    Union,
)

from typing_extensions import assert_type

import loadercache
from loadercache import (
    MISS,
    SPEEDUPS,
    BatchLoadFn,
    CacheMap,
    DataLoader,
    Leased,
    Loaders,
    LoaderStats,
    MutableMappingCacheMap,
    Refresh,
    RemoteTier,
    RemoteTierError,
    Stale,
    Takeover,
    __version__,
    current_loaders,
    loader_property,
    use_loaders,
)
from loadercache.__main__ import Database, DemoResult, main, run_demo
from loadercache.backends import DictCacheMap, LRUCacheMap, TTLCacheMap
from loadercache.backends.redis import RedisCacheMap, RedisStore, StoreStats
from loadercache.backends.serializers import (
    MAX_DEPTH,
    DeserializationError,
    MsgpackSerializer,
    SerializationError,
    Serializer,
    UnsafePickleSerializer,
)
from loadercache.cache import as_cache_map
from loadercache.integrations.asgi import LoadersMiddleware, Scope
from loadercache.testing import BatchRecorder, CacheMapContract, RemoteTierContract
from loadercache.tracing import (
    NOOP_SPAN,
    EndableSpan,
    SpanLike,
    batch_span,
    redis_span,
    set_tracer_provider,
    start_redis_span,
)


class User:
    def __init__(self, name: str) -> None:
        self.name = name


async def fetch_users(ids: List[int]) -> List[Optional[User]]:
    return [User(f"user {i}") for i in ids]


async def fetch_names(ids: List[int]) -> Dict[int, str]:
    return {i: f"user {i}" for i in ids}


# -- the loader ----------------------------------------------------------------


async def the_loader() -> None:
    users = DataLoader(fetch_users)
    assert_type(users, DataLoader[int, Optional[User]])
    assert_type(await users.load(1), Optional[User])
    assert_type(await users.load_many([1, 2]), List[Optional[User]])
    with_errors = await users.load_many([1], return_exceptions=True)
    assert_type(with_errors, List[Union[Optional[User], BaseException]])
    assert_type(
        users.clear(1).clear_all().prime(2, None), DataLoader[int, Optional[User]]
    )
    assert_type(users.stats, LoaderStats)
    assert_type(users.cache_map, CacheMap[Any, Optional[User]])
    names = DataLoader(fetch_names, max_batch_size=100, name="names")
    assert_type(names, DataLoader[int, str])
    users.load("1")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    fn: BatchLoadFn[int, Optional[User]] = fetch_users
    assert_type(DataLoader(fn), DataLoader[int, Optional[User]])
    assert_type(SPEEDUPS, bool)
    version: str = __version__
    assert version == loadercache.__version__


class UserLoader(DataLoader[int, User]):
    max_batch_size = 100

    async def batch_load_fn(self, ids: List[int]) -> List[User]:
        return [User(str(i)) for i in ids]


class WrongValues(DataLoader[int, str]):
    # DataLoader declares batch_load_fn with the loader's own types, so a
    # subclass returning values of another type is an error.
    async def batch_load_fn(  # type: ignore[override]  # pyright: ignore[reportIncompatibleMethodOverride]
        self, keys: List[int]
    ) -> List[int]:
        return keys


async def a_subclass() -> None:
    assert_type(await UserLoader().load(1), User)


def stats(s: LoaderStats) -> Tuple[int, float, Dict[str, Any]]:
    return s.loads, s.mean_batch, s.as_dict()


# -- cache maps ----------------------------------------------------------------


async def cache_maps() -> None:
    # The value type comes from the batch function: no annotation needed.
    assert_type(
        DataLoader(fetch_users, cache_map=DictCacheMap()),
        DataLoader[int, Optional[User]],
    )
    assert_type(
        DataLoader(fetch_users, cache_map=LRUCacheMap(maxsize=10_000)),
        DataLoader[int, Optional[User]],
    )
    assert_type(
        DataLoader(fetch_users, cache_map=TTLCacheMap(maxsize=10_000, ttl=30)),
        DataLoader[int, Optional[User]],
    )
    LRUCacheMap(maxsiz=10)  # type: ignore[call-arg]  # pyright: ignore[reportCallIssue]
    typed: DictCacheMap[int, str] = DictCacheMap()
    assert_type(typed.get(1), Optional[asyncio.Future[str]])
    adapted = MutableMappingCacheMap[int, str]({})
    assert_type(adapted.mapping, MutableMapping[int, asyncio.Future[str]])
    DataLoader(fetch_names, cache_map={})
    protocol: CacheMap[int, str] = as_cache_map({})
    assert isinstance(protocol, CacheMap)
    assert MISS is not None


class JSONTier:
    """A user's own cache map with a remote tier."""

    def __init__(self) -> None:
        self.local: Dict[int, asyncio.Future[str]] = {}
        self.remote: Dict[int, str] = {}

    def get(self, key: int) -> Optional[asyncio.Future[str]]:
        return self.local.get(key)

    def set(self, key: int, value: asyncio.Future[str]) -> None:
        self.local[key] = value

    def delete(self, key: int) -> None:
        self.local.pop(key, None)

    def clear(self) -> None:
        self.local.clear()

    async def get_many(self, keys: Sequence[int]) -> Sequence[Any]:
        if not self.remote:
            raise RemoteTierError("the store is down")
        return [self.remote.get(key, MISS) for key in keys]

    async def set_many(self, items: Sequence[Tuple[int, str]]) -> None:
        self.remote.update(items)

    def discard(self, key: int, future: asyncio.Future[Any]) -> None:
        if self.local.get(key) is future:
            del self.local[key]


def leased_elsewhere() -> Leased:
    # What a tier answers for a key another loader is loading.
    answer = Leased(asyncio.sleep(0, result="loaded elsewhere"))
    assert_type(answer.awaitable, Awaitable[Any])
    return answer


def handed_over() -> Takeover:
    # What a Leased wait may complete with: the first to claim it loads it.
    takeover = Takeover(asyncio.sleep(0, result="loaded by the claimer"))
    assert_type(takeover.claim(), bool)
    assert_type(takeover.awaitable, Awaitable[Any])
    return takeover


def stale_and_refreshed() -> Tuple[Stale, Refresh]:
    # What a tier answers for a value past its time, and one near it.
    stale = Stale("served if the load fails")
    assert_type(stale.value, Any)
    refresh = Refresh("served now", print)
    assert_type(refresh.store, Callable[[Any], None])
    return stale, refresh


def own_tier() -> DataLoader[int, str]:
    tier = JSONTier()
    remote: RemoteTier[int, str] = tier  # the protocol, structurally
    remote.discard(1, asyncio.get_running_loop().create_future())
    return DataLoader(fetch_names, cache_map=tier)


# -- Redis -----------------------------------------------------------------------


async def redis() -> None:
    store = RedisStore("redis://localhost:6379/0", ttl=600, serializer=None)
    # The map is not generic (the store cannot know the values' type), so
    # the loader's annotation says what they are.
    users: DataLoader[int, Optional[User]] = DataLoader(
        fetch_users, cache_map=store.cache_map("tenant:1:users")
    )
    assert_type(users.cache_map, CacheMap[Any, Optional[User]])
    assert_type(store.cache_map("users"), RedisCacheMap)
    assert_type(store.stats, StoreStats)
    assert_type(store.redis_key("users", 1), bytes)
    await store.flush()
    await store.aclose()


def serializers() -> None:
    assert_type(MAX_DEPTH, int)
    serializer: Serializer = MsgpackSerializer()
    assert_type(serializer.dumps({"a": 1}), bytes)
    msgpack = MsgpackSerializer()
    msgpack.register(datetime, 40, datetime.isoformat, datetime.fromisoformat)
    unsafe: Serializer = UnsafePickleSerializer()
    assert unsafe.loads(unsafe.dumps(1)) == 1
    try:
        msgpack.loads(msgpack.dumps(object()))
    except (SerializationError, DeserializationError) as error:
        assert_type(error, Union[SerializationError, DeserializationError])


# -- per-request loaders -----------------------------------------------------------


class AppLoaders(Loaders):
    def __init__(self, tenant: str) -> None:
        self.tenant = tenant

    @loader_property
    def users(self) -> DataLoader[int, Optional[User]]:
        return DataLoader(fetch_users)


async def registry() -> None:
    loaders = AppLoaders("acme")
    assert_type(loaders.users, DataLoader[int, Optional[User]])
    assert_type(AppLoaders.users, loader_property[DataLoader[int, Optional[User]]])
    with use_loaders(loaders) as used:
        assert_type(used, AppLoaders)
        assert_type(current_loaders(AppLoaders), AppLoaders)
        assert_type(current_loaders(), Loaders)
    assert_type(loaders.created(), Dict[str, DataLoader[Any, Any]])
    assert_type(loaders.stats(), Dict[str, LoaderStats])


def middleware(app: Any) -> LoadersMiddleware:
    def factory(scope: Scope) -> AppLoaders:
        return AppLoaders(str(scope.get("tenant", "acme")))

    return LoadersMiddleware(app, factory=factory)


# -- tracing ---------------------------------------------------------------------


def tracing() -> None:
    set_tracer_provider(None)
    with batch_span("users", 2) as span:
        assert_type(span, SpanLike)
        span.set_attribute("loadercache.remote_hits", 1)
    with redis_span("get_many", 2) as span:
        span.set_attribute("db.system", "redis")
    ended: EndableSpan = start_redis_span("set_many", 3)
    ended.end()
    assert NOOP_SPAN is not None


# -- the kit for backend authors -----------------------------------------------------


class TestJSONTier(RemoteTierContract):
    def make_cache_map(self) -> CacheMap[Any, Any]:
        return JSONTier()


class TestDict(CacheMapContract):
    capacity = 10

    def make_cache_map(self) -> CacheMap[Any, Any]:
        return DictCacheMap()


async def recorder() -> None:
    source = BatchRecorder({1: "one"})
    loader = DataLoader(source)
    assert await loader.load(1) == "one"
    assert_type(source.calls, List[List[Any]])


# -- the demo --------------------------------------------------------------------------


async def demo() -> None:
    result = await run_demo(posts=3)
    assert_type(result, DemoResult)
    assert_type(result.batched_queries, int)
    db = Database(posts=3)
    assert_type(db.query("SELECT 1"), List[Any])
    db.close()
    main(["--posts", "3"])
