"""`ReadAhead`: batches read by a pool of threads before Keras asks for them."""

import threading
from concurrent.futures import ThreadPoolExecutor


class ReadAhead:
    """Reads batches `index .. index + depth - 1` of an epoch while the model trains on `index`.

    Batches are keyed by `(epoch, index)`, so a batch read ahead for another
    epoch, or one passed over, is never served.

    Args:
        threads: int. How many batches are read at once.
        depth: int. How many batches, from the one asked for, are read ahead.

    Example:
    ```python
    reader = ReadAhead(threads=4, depth=10)
    images, labels = reader.get(train_ds.batch, epoch=0, index=1, count=len(train_ds))
    ```
    """

    def __init__(self, threads, depth):
        self.threads, self.depth = threads, max(1, depth)
        self._lock = threading.Lock()
        self._pool = None
        self._pending = {}

    def get(self, read, epoch, index, count):
        """`read(index, epoch)`, read ahead with the batches after it (up to `count`)."""
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="kflowers-loader")
            self._drop(lambda key: key[0] != epoch or key[1] < index)  # another epoch's, or passed over
            for ahead in range(index, min(index + self.depth, count)):
                if (epoch, ahead) not in self._pending:
                    self._pending[(epoch, ahead)] = self._pool.submit(read, ahead, epoch)
            future = self._pending.pop((epoch, index))
        return future.result()

    def clear(self):
        """Forget what was read ahead and not asked for (a fit stopped early, or Keras only looked)."""
        with self._lock:
            self._drop(lambda key: True)

    def close(self):
        """Forget what was read ahead and stop the threads (a reader that is done, or interrupted)."""
        with self._lock:
            self._drop(lambda key: True)
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None

    def _drop(self, which):
        for key in [key for key in self._pending if which(key)]:
            self._pending.pop(key).cancel()
