"""TensorFlow's start-up lines, kept off the terminal unless asked for.

keras-hub imports TensorFlow on Linux (through tensorflow-text), and Keras
does on its tensorflow backend. While TensorFlow's native libraries load they
write a few lines straight to the process's stderr ("All log messages before
absl::InitializeLog() is called are written to STDERR", oneDNN's notice,
"Could not find cuda drivers"), twice: before any log level is read, so
`TF_CPP_MIN_LOG_LEVEL` does not reach them. The one way to keep them off is
to point file descriptor 2 elsewhere while those modules execute.

`import kflowers` changes nothing of the process's stderr: a library should
not silence it behind the user's back (a crash while TensorFlow loads would
print nothing). The quiet start is asked for: the `kflowers` command line
calls `install()` (`quiet_start`), and so do the examples, in plain sight.
After it, the first import of `tensorflow` or `tensorflow_text`, by kflowers,
Keras, keras-hub or the user, runs with file descriptor 2 on `/dev/null`, and
`TF_CPP_MIN_LOG_LEVEL` defaults to 2 (no INFO or WARNING lines later). Set
`KFLOWERS_VERBOSE=1` (the CLI's `--verbose` does) to see everything. Python
exceptions still propagate; only what is written to the stderr file
descriptor during those imports is lost.

Example:
```python
import kflowers
kflowers.quiet_start()             # before keras-hub (which imports TensorFlow) is imported
import keras_hub                   # quiet
```
"""

import contextlib
import importlib.abc
import os
import sys

QUIET_MODULES = ("tensorflow", "tensorflow_text")


def verbose():
    """Whether the user asked to see native libraries' lines (`KFLOWERS_VERBOSE` set and not 0)."""
    return os.environ.get("KFLOWERS_VERBOSE", "0") not in ("", "0")


@contextlib.contextmanager
def stderr_to_devnull():
    """File descriptor 2 on `/dev/null` for the block (what native code writes there is dropped)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


class _QuietLoader(importlib.abc.Loader):
    """The module's own loader, executing it with stderr dropped."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        with stderr_to_devnull():
            self.loader.exec_module(module)

    def __getattr__(self, name):  # resource readers and the like: the real loader's
        return getattr(self.loader, name)


class _QuietFinder(importlib.abc.MetaPathFinder):
    """Finds `QUIET_MODULES` as the other finders do, and wraps their loader."""

    def find_spec(self, name, path, target=None):
        if name not in QUIET_MODULES or verbose():
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _QuietLoader(spec.loader)
                return spec
        return None


def install():
    """Keep TensorFlow's start-up lines off stderr from now on (unless `verbose()`); idempotent."""
    if not verbose():
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if not any(isinstance(finder, _QuietFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _QuietFinder())


quiet_start = install  # the public name: `kflowers.quiet_start()`
