"""`MicroBatcher`: concurrent requests' photos answered together, in one forward pass per batch.

A server that runs the model once per request wastes most of a CPU's or a
GPU's width on batches of one. The batcher collects the photos of every
request that arrives within a short wait (`max_wait` seconds after the first
one, or until `max_batch` are waiting) and runs the model once on them, on
a thread of its own so the event loop keeps serving. Its queue is bounded:
when `max_queue` photos already wait, `submit` raises `QueueFull` at once
(the server answers 503) instead of letting waiting requests pile up.

Example:
```python
import asyncio

async def main():
    batcher = MicroBatcher(lambda pixels: pixels.mean(axis=(1, 2, 3)), max_batch=32, max_wait=0.005)
    await batcher.start()
    value = await batcher.submit(np.zeros((32, 32, 3), "uint8"))  # 0.0, once its batch has run
    await batcher.stop()
    return value

asyncio.run(main())
```
"""

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np


class QueueFull(Exception):
    """More photos wait for the model than the batcher's queue holds."""


class MicroBatcher:
    """Runs `function` on batches of the items that `submit` is given.

    Args:
        function: callable. Takes a stacked batch (`np.stack` of the items)
            and returns a sequence with one result per item, in order. Runs
            on the batcher's own thread, one batch at a time.
        max_batch: int. The most items per call. Defaults to `32`.
        max_wait: float. Seconds to wait for more items after the first
            one of a batch arrives. Defaults to `0.005`.
        max_queue: int. The most items waiting; more raise `QueueFull`.
            Defaults to `256`.
    """

    def __init__(self, function, max_batch=32, max_wait=0.005, max_queue=256):
        self.function, self.max_batch, self.max_wait, self.max_queue = function, max_batch, max_wait, max_queue
        self.photos = self.batches = 0  # items answered and batches run, for /health and the load benchmark
        self._queue = None
        self._gathering = []  # the batch being gathered, until it runs
        self._task = None
        self._thread = None

    async def start(self):
        """Start taking items (call from the event loop that will `submit`)."""
        self._queue = asyncio.Queue(self.max_queue)
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="kflowers-model")
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self):
        """Stop after the batch in hand; items still waiting are refused with `QueueFull`."""
        if self._task is None:
            return
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        while not self._queue.empty():
            _, future = self._queue.get_nowait()
            if not future.done():
                future.set_exception(QueueFull("the server is stopping"))
        self._thread.shutdown(wait=True)
        self._task = None

    def room(self):
        """How many more items the queue takes now."""
        return self.max_queue - self._queue.qsize()

    def waiting(self):
        """How many items wait now: in the queue, or in the batch being gathered (not yet running)."""
        return (self._queue.qsize() if self._queue is not None else 0) + len(self._gathering)

    async def submit(self, item):
        """The result of `function` for `item`, once its batch has run.

        Raises:
            QueueFull: `max_queue` items already wait.
        """
        future = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait((item, future))
        except asyncio.QueueFull:
            raise QueueFull(f"{self.max_queue} photos are already waiting for the model") from None
        return await future

    async def _run(self):
        loop = asyncio.get_running_loop()
        while True:
            batch = self._gathering = [await self._queue.get()]
            deadline = loop.time() + self.max_wait
            while len(batch) < self.max_batch:
                try:  # what already waits joins at once
                    batch.append(self._queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), timeout))
                except asyncio.TimeoutError:
                    break
            batch = [(item, future) for item, future in batch if not future.done()]  # a client gone
            self._gathering = []
            if not batch:
                continue
            self.photos, self.batches = self.photos + len(batch), self.batches + 1
            try:
                results = await loop.run_in_executor(self._thread, self.function, np.stack([i for i, _ in batch]))
            except Exception as error:  # noqa: BLE001 - every waiting request learns of it
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                continue
            for (_, future), result in zip(batch, results):
                if not future.done():
                    future.set_result(result)
