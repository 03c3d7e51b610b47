"""Shared test machinery: real servers on free ports, each on its own event loop thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import Generic, Protocol, TypeVar


class Stoppable(Protocol):
    async def stop(self, grace: float | None) -> None: ...


T = TypeVar("T", bound=Stoppable)


class ServerThread(Generic[T]):
    """Runs a ``grpc.aio`` server on an event loop in a background thread.

    ``start`` is awaited on that loop and returns the running server (anything with an async
    ``stop(grace)``); :meth:`stop` shuts it down and ends the thread.
    """

    def __init__(self, start: Callable[[], Awaitable[T]]) -> None:
        self._start = start
        self._ready: Future[T] = Future()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="test-server", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            running = self.loop.run_until_complete(self._start())
        except BaseException as exc:
            self._ready.set_exception(exc)
            return
        self._ready.set_result(running)
        self.loop.run_forever()

    def start(self) -> T:
        self._thread.start()
        return self._ready.result(timeout=30)

    @property
    def running(self) -> T:
        return self._ready.result()

    def stop(self, grace: float | None = None) -> None:
        if self._ready.done() and self._ready.exception() is None:
            asyncio.run_coroutine_threadsafe(self.running.stop(grace), self.loop).result(timeout=30)
            self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=30)
        self.loop.close()
