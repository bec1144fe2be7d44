"""Types of the optional C extension; loader.py is its reference implementation."""

from collections.abc import Hashable
from typing import Any, Callable, List, Optional, Sequence

class BatchCore:
    loop: Any
    create_future: Optional[Callable[[], Any]]
    keys: List[Any]
    cache_keys: List[Hashable]
    futures: List[Any]
    closed: bool

class LoaderCore:
    def load(self, key: Any, /) -> Any: ...
    def _enqueue(self, key: Any, cache_key: Hashable, /) -> Any: ...
    def _settle(
        self, cache_keys: List[Hashable], futures: List[Any], values: Sequence[Any], /
    ) -> None: ...

def _setup(
    unhashable_error: Callable[[object], Optional[TypeError]], no_key: object, /
) -> None: ...
