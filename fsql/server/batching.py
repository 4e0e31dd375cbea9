"""Micro-batching: concurrent requests for one model are gathered (up to ``max_batch`` items, waiting at
most ``max_wait_ms`` after the first) and run as one call, off the event loop.

While a batch runs in the batcher's thread the loop keeps accepting requests, which form the next batch;
so under load batches grow by themselves and one online read plus one model call serve many requests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class MicroBatcher(Generic[Item, Result]):
    def __init__(self, run: Callable[[Sequence[Item]], Sequence[Result | BaseException]], *, max_batch: int,
                 max_wait_ms: float, on_batch: Callable[[int], None] | None = None) -> None:
        self.run = run
        self.max_batch = max(1, max_batch)
        self.max_wait = max(0.0, max_wait_ms) / 1000
        self.on_batch = on_batch
        self._pending: list[tuple[Item, asyncio.Future[Any]]] = []
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        # One thread: batches run one after another, in arrival order, and never compete for the GIL.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fsql-batch")

    async def submit(self, item: Item) -> Result:
        loop = asyncio.get_running_loop()
        if self._closed and (self._task is None or self._task.done()):
            # A request that still holds a replaced state: score it alone rather than wait forever.
            result = (await loop.run_in_executor(None, self.run, [item]))[0]
            if isinstance(result, BaseException):
                raise result
            return result
        if self._task is None:
            self._wake = asyncio.Event()
            self._task = loop.create_task(self._loop())
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((item, future))
        assert self._wake is not None
        self._wake.set()
        return await future

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._wake is not None
        while True:
            if not self._pending:
                if self._closed:
                    break
                self._wake.clear()
                await self._wake.wait()
                continue
            if len(self._pending) < self.max_batch and self.max_wait > 0:
                deadline = loop.time() + self.max_wait
                while len(self._pending) < self.max_batch and (left := deadline - loop.time()) > 0:
                    self._wake.clear()
                    try:
                        await asyncio.wait_for(self._wake.wait(), left)
                    except TimeoutError:
                        break
            batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch:]
            if self.on_batch is not None:
                self.on_batch(len(batch))
            try:
                results = await loop.run_in_executor(self._executor, self.run, [item for item, _ in batch])
            except BaseException as e:  # noqa: BLE001 - every waiter must hear about the failure
                results = [e] * len(batch)
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)

    async def close(self) -> None:
        """Finish what is queued (requests in flight on an old serving plan), then stop."""
        self._closed = True
        if self._task is not None and self._wake is not None:
            self._wake.set()
            await self._task
        self._executor.shutdown(wait=False)
