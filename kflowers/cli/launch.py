"""`kflowers launch`: torchrun for kflowers, with a bounded wait for the other machines.

`torchrun --nnodes 2 ... -m kflowers train` waits for the second machine in torchrun's own agent, before
any kflowers code runs, for torchrun's default (10 to 15 minutes), silently. `kflowers launch` starts the
same torchrun (a c10d rendezvous, one process per device), says what it waits for, and ends with one line
when the machines have not all joined within `--join-timeout` seconds.

Example (on each of two machines, `--node-rank 0` and `--node-rank 1`):

    kflowers launch --nnodes 2 --node-rank 0 --rdzv-endpoint 10.0.0.1:29400 train --data flowers --out runs/ddp
"""

import signal
import sys

from kflowers.errors import KflowersError


def launch(command, nnodes=1, node_rank=0, nproc_per_node=1, endpoint="127.0.0.1:29400", join_timeout=300.0):
    """Run `kflowers COMMAND...` under torchrun on this machine, as machine `node_rank` of `nnodes`.

    Args:
        command: the kflowers command line to run in every process (`["train", "--data", ...]`).
        nnodes: how many machines take part.
        node_rank: this machine's index, from 0.
        nproc_per_node: processes on this machine (one per device).
        endpoint: `HOST:PORT` of the rendezvous, the same on every machine (machine 0's address).
        join_timeout: seconds to wait for every machine to join before giving up.

    Returns:
        The exit status: 0, or the first failed process's.

    Raises:
        KflowersError: the machines did not all join within `join_timeout` seconds.
    """
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous.api import RendezvousTimeoutError

    argv = [
        *("--nnodes", str(nnodes), "--node-rank", str(node_rank), "--nproc-per-node", str(nproc_per_node)),
        *("--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-conf", f"join_timeout={join_timeout:g}"),
        *("-m", "kflowers", *command),
    ]
    if nnodes > 1:
        print(
            f"kflowers launch: machine {node_rank} of {nnodes}: waiting up to {join_timeout:g} s for the others to "
            f"join at {endpoint}",
            file=sys.stderr,
            flush=True,
        )
    try:
        torchrun.run(torchrun.parse_args(argv))
    except RendezvousTimeoutError as error:
        raise KflowersError(
            f"the {nnodes} machines did not all join at {endpoint} within {join_timeout:g} s: start the same "
            f"kflowers launch on every machine (--node-rank 0 to {nnodes - 1}), check that each reaches {endpoint}, "
            "or wait longer with --join-timeout"
        ) from error
    except ChildFailedError as error:  # each process has said what went wrong on its own stderr
        return next((failure.exitcode for failure in error.failures.values() if failure.exitcode), 1)
    except SignalException as error:  # torchrun's agent, once its workers have stopped (they saved the run)
        if error.sigval == signal.SIGINT:
            raise KeyboardInterrupt from None  # Ctrl-C: exit 130, as every kflowers command
        return 128 + int(error.sigval)
    return 0
