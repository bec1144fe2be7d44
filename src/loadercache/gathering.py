"""The future of ``DataLoader.load_many``: one future for a list of loads.

``asyncio.gather`` adds a done callback to every awaitable it is given and
runs a Python callback as each one settles.  The loads of a ``load_many``
mostly settle together, in one batch, so this future waits on one load at a
time instead, the first one still pending in key order: a list that one
batch answers costs one callback in all.
"""

from __future__ import annotations

import asyncio
from typing import Any, List, Optional

__all__ = ["Gathering"]


class Gathering(asyncio.Future[List[Any]]):
    """The future :meth:`DataLoader.load_many` returns.

    It waits on one load at a time, the first one still pending in key order,
    so a list that one batch answers costs one callback in all, where
    ``asyncio.gather`` adds one to every load.  Cancelling it cancels the
    loads, as cancelling a gather does.

    >>> many = users.load_many([1, 2])  # a Gathering
    >>> alice, bob = await many
    """

    __slots__ = ("_loads", "_next", "_return_exceptions")

    _loads: List[asyncio.Future[Any]]
    _next: int
    _return_exceptions: bool

    @classmethod
    def of(
        cls,
        loop: asyncio.AbstractEventLoop,
        loads: List[asyncio.Future[Any]],
        return_exceptions: bool,
    ) -> Gathering:
        gathering = cls(loop=loop)
        gathering._loads = loads
        gathering._next = 0
        gathering._return_exceptions = return_exceptions
        gathering._wait()
        return gathering

    def cancel(self, msg: Any = None) -> bool:
        if self.done():
            return False
        for load in self._loads:
            load.cancel()
        return super().cancel(msg)

    def _wait(self, settled: Optional[asyncio.Future[Any]] = None) -> None:
        """Wait for the next load still pending; fill this future after the last."""
        if self.done():
            return  # cancelled
        loads = self._loads
        if settled is not None and not self._return_exceptions:
            # Called back: mostly the batch that settled this load settled
            # them all, with values.  Then one call a load is the whole cost;
            # one still pending (InvalidStateError) or failed ends the try.
            try:
                values = [load.result() for load in loads]
            except BaseException:
                pass
            else:
                self.set_result(values)
                return
        for i in range(self._next, len(loads)):
            if not loads[i].done():
                self._next = i
                loads[i].add_done_callback(self._wait)
                return
        if self._return_exceptions:
            self.set_result([_outcome(load) for load in loads])
            return
        try:
            values = [load.result() for load in loads]
        except BaseException as error:  # the first failure, cancelled included
            for load in loads:
                if not load.cancelled():
                    load.exception()  # the others' are retrieved, as gather does
            self.set_exception(error)
            return
        self.set_result(values)


def _outcome(future: asyncio.Future[Any]) -> Any:
    if future.cancelled():
        return asyncio.CancelledError()
    error = future.exception()
    return future.result() if error is None else error
