"""The loaders of one request: declared once, created lazily, reachable anywhere.

A DataLoader's cache is one request's view of the data, so an application
needs a fresh set of loaders per request, and its resolvers need to find that
set.  Declare the set as a class whose methods build each loader::

    class AppLoaders(Loaders):
        def __init__(self, db: Database, viewer: User) -> None:
            self.db = db
            self.viewer = viewer

        @loader_property
        def users(self) -> DataLoader[int, User]:
            return DataLoader(partial(fetch_users, self.db))

Create one instance per request; ``loaders.users`` builds its loader the first
time it is read, and returns that same loader for the rest of the request
(a request that never touches ``users`` never builds it).  Its type is the
factory's return type: ``DataLoader[int, User]``, not ``Any``.

To reach the instance from code that is not handed it, run the request inside
:func:`use_loaders` and call :func:`current_loaders` anywhere below it.  Both
rest on a :class:`contextvars.ContextVar`, which asyncio copies into every
task a request starts, so concurrent requests each see their own set and
never another's.  (:class:`loadercache.integrations.asgi.LoadersMiddleware`
does this for every HTTP request of an ASGI application.)
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from contextvars import ContextVar
from typing import (
    Any,
    Callable,
    ClassVar,
    Dict,
    Generic,
    Iterator,
    Optional,
    Tuple,
    Type,
    TypeVar,
    overload,
)

from loadercache.loader import DataLoader
from loadercache.stats import LoaderStats

__all__ = ["Loaders", "current_loaders", "loader_property", "use_loaders"]

L = TypeVar("L", bound="DataLoader[Any, Any]")
S = TypeVar("S", bound="Loaders")

logger: logging.Logger = logging.getLogger("loadercache")

_current: ContextVar[Optional[Loaders]] = ContextVar(
    "loadercache.loaders", default=None
)


class loader_property(Generic[L]):
    """Declare one loader of a :class:`Loaders` set; built on first access.

    >>> class AppLoaders(Loaders):
    ...     @loader_property
    ...     def users(self) -> DataLoader[int, User]:
    ...         return DataLoader(fetch_users)
    >>> loaders = AppLoaders()
    >>> loaders.users is loaders.users
    True

    The factory runs once per instance, the first time the attribute is read.
    A loader built without a ``name`` is named after the attribute, so log
    records and spans say which loader they are about.  Assigning the
    attribute (``loaders.users = fake``) replaces the loader, e.g. in a test.
    """

    def __init__(self, factory: Callable[[Any], L]) -> None:
        self.factory = factory
        self.name = getattr(factory, "__name__", "")
        self.__doc__ = getattr(factory, "__doc__", None)

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(
        self, instance: None, owner: Optional[type] = None
    ) -> loader_property[L]: ...

    @overload
    def __get__(self, instance: Loaders, owner: Optional[type] = None) -> L: ...

    def __get__(self, instance: Optional[Loaders], owner: Optional[type] = None) -> Any:
        if instance is None:
            return self
        built = self.factory(instance)
        if not isinstance(built, DataLoader):
            raise TypeError(
                f"The factory of {type(instance).__name__}.{self.name} must return "
                f"a DataLoader, but it returned {built!r}."
            )
        if built.name is None:
            built.name = self.name
        # Stored on the instance, the loader shadows this (non-data) descriptor:
        # every later read is a plain attribute lookup.
        instance.__dict__[self.name] = built
        return built


class Loaders:
    """The base class of a per-request set of loaders (see :class:`loader_property`).

    >>> class AppLoaders(Loaders):
    ...     def __init__(self, db: Database) -> None:
    ...         self.db = db
    ...
    ...     @loader_property
    ...     def users(self) -> DataLoader[int, User]:
    ...         return DataLoader(partial(fetch_users, self.db))
    >>> loaders = AppLoaders(db)           # once per request
    >>> user = await loaders.users.load(1)

    Subclasses may define ``__init__`` freely (no ``super().__init__()``
    needed) and may be dataclasses; they must not use ``__slots__``, since
    each built loader is kept in the instance's ``__dict__``.
    """

    _loader_names: ClassVar[Tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        names: Dict[str, None] = {}
        for klass in reversed(cls.__mro__):
            for name, value in vars(klass).items():
                if isinstance(value, loader_property):
                    names[name] = None
        cls._loader_names = tuple(names)

    def created(self) -> Dict[str, DataLoader[Any, Any]]:
        """The loaders built so far in this set, by attribute name.

        >>> loaders.created()
        {'users': <DataLoader 'users' cache_map=...>}
        """
        built = self.__dict__
        return {
            name: built[name]
            for name in self._loader_names
            if isinstance(built.get(name), DataLoader)
        }

    def stats(self) -> Dict[str, LoaderStats]:
        """The :class:`~loadercache.LoaderStats` of every loader built so far.

        >>> {name: s.batches for name, s in loaders.stats().items()}
        {'users': 2}
        """
        return {name: built.stats for name, built in self.created().items()}


@contextmanager
def use_loaders(loaders: S) -> Iterator[S]:
    """Make *loaders* what :func:`current_loaders` returns inside the block.

    >>> with use_loaders(AppLoaders(db)):
    ...     result = await graphql(schema, query)

    The previous set (usually none) is restored on exit, so blocks nest.  On
    exit, if the ``loadercache`` logger is enabled for DEBUG, one record
    summarises the request: the message names each loader built, and the
    record's ``loadercache_stats`` attribute holds their counters as dicts.
    """
    token = _current.set(loaders)
    try:
        yield loaders
    finally:
        _current.reset(token)
        if logger.isEnabledFor(logging.DEBUG):
            _log_stats(loaders)


def _log_stats(loaders: Loaders) -> None:
    stats = {name: s.as_dict() for name, s in loaders.stats().items()}
    logger.debug(
        "%s: %s",
        type(loaders).__name__,
        ", ".join(
            f"{name} {s['batched_keys']} keys in {s['batches']} batches"
            for name, s in stats.items()
        )
        or "no loader used",
        extra={"loadercache_stats": stats},
    )


@overload
def current_loaders() -> Loaders: ...


@overload
def current_loaders(cls: Type[S]) -> S: ...


def current_loaders(cls: Optional[Type[Loaders]] = None) -> Loaders:
    """The loaders of the current request, as set by :func:`use_loaders`.

    >>> user = await current_loaders(AppLoaders).users.load(user_id)

    Passing the class types the result (and checks it).  Raises
    ``RuntimeError`` outside a ``use_loaders`` block, and ``TypeError`` if the
    set in use is not an instance of *cls*.
    """
    loaders = _current.get()
    if loaders is None:
        raise RuntimeError(
            "current_loaders() was called outside a request: no loaders are in "
            "use in this context. Wrap the request in `with use_loaders(...)`, "
            "or add loadercache.integrations.asgi.LoadersMiddleware to the "
            "ASGI application."
        )
    if cls is not None and not isinstance(loaders, cls):
        raise TypeError(
            f"current_loaders({cls.__name__}) found a {type(loaders).__name__} "
            f"in use, which is not a {cls.__name__}; pass the class given to "
            "use_loaders(), or a base class of it."
        )
    return loaders
