"""Ctrl-C during a run: finish the batch, then stop and save (`StopOnInterrupt`)."""

import signal


class StopOnInterrupt:
    """Ctrl-C while training: finish the current batch, then stop and save.

    A context manager whose `event` (a `threading.Event`) is set by the first
    Ctrl-C; pass it to `training.train(stop=...)`. A second Ctrl-C stops at once.
    Off the main thread (a run started from a worker thread) no handler is
    installed (Python allows none there): set `event` yourself to stop.
    """

    def __init__(self):
        import threading

        self.event = threading.Event()

    def __enter__(self):
        def handler(signum, frame):
            if self.event.is_set():
                raise KeyboardInterrupt
            self.event.set()
            print("\nInterrupted: stopping after this batch and saving the run (Ctrl-C again to abort).", flush=True)

        import threading

        self._previous = None
        if threading.current_thread() is threading.main_thread():  # Python allows handlers only there
            self._previous = signal.signal(signal.SIGINT, handler)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
