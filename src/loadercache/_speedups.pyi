"""Types of the optional C extension; loader.py is its reference implementation."""

from collections.abc import Hashable
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

class CountsCore:
    local_hits: int
    local_misses: int
    batches: int
    batched_keys: int
    max_batch: int
    remote_hits: int
    remote_misses: int
    remote_errors: int
    failed_batches: int

class BatchCore:
    loop: Any
    keys: List[Any]
    cache_keys: List[Hashable]
    futures: List[Any]

class LoaderCore:
    _batch: Optional[BatchCore]
    _limit: Optional[int]
    _followers: Dict[Any, List[Any]]
    _counts: CountsCore
    def load(self, key: Any) -> Any: ...
    def _enqueue(self, key: Any, cache_key: Hashable, /) -> Any: ...
    def _new_future(self) -> Any: ...
    def _settle(
        self, cache_keys: List[Hashable], futures: List[Any], values: Sequence[Any], /
    ) -> None: ...

class HitCounter:
    value: int

class NearGet:
    def __init__(
        self,
        local_get: Callable[[Any], Any],
        local_set: Callable[[Any, Any], Any],
        near: Dict[Any, Any],
        hits: HitCounter,
        /,
    ) -> None: ...
    def __call__(self, key: Any, /) -> Any: ...

class ShortSet:
    def __init__(
        self,
        local_set: Callable[[Any, Any], Any],
        slow: Callable[[Any, Any], None],
        /,
    ) -> None: ...
    def __call__(self, key: Any, value: Any, /) -> None: ...

def _bulks(
    buf: bytes, pos: int, count: int, max_bulk: int, /
) -> Tuple[List[Optional[bytes]], int]: ...
def _encode(command: Sequence[Any], /) -> Optional[bytes]: ...
def _short_keys(
    str_base: bytes, int_base: bytes, keys: List[Any], /
) -> Tuple[List[Optional[bytes]], int]: ...
def _open_plain(
    prefix: bytes,
    header: int,
    rkeys: List[bytes],
    raws: List[Any],
    loads: Optional[Callable[[bytes], Any]],
    miss: Any,
    later: Any,
    /,
) -> Tuple[List[Any], int]: ...
def _setup(unhashable_error: Callable[[object], Optional[TypeError]], /) -> None: ...
