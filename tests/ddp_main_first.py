"""Run by test_distributed.py under torchrun: each machine's first process fills its cache, the others
find it full."""

import os
import sys

os.environ["KERAS_BACKEND"] = "torch"

from kflowers.training.distributed import main_process_first  # noqa: E402

cache = os.path.join(sys.argv[1], f"node{os.environ['GROUP_RANK']}")  # a machine's own disk
os.makedirs(cache, exist_ok=True)
rank = os.environ["RANK"]


def fill_or_find():
    marker = os.path.join(cache, ".complete")
    if os.path.exists(marker):
        return f"rank {rank} found the cache"
    with open(marker, "w") as f:  # a second writer would find the marker above
        f.write(rank)
    return f"rank {rank} filled the cache"


# One write per line: the three processes share torchrun's stdout, and print() writes the line and its
# newline separately (they interleaved on a busy machine).
sys.stdout.write(main_process_first(fill_or_find) + "\n")
sys.stdout.flush()
