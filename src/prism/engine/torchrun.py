"""torchrun as prism starts it: the same launcher, without its Python traceback when a worker fails.

A failing worker has already printed prism's one-line error (and hint); torchrun would then add
a ``ChildFailedError`` traceback and a failure table. Here that becomes one line naming the
ranks and exit codes, and the first failure's exit code (``PRISM_DEBUG=1``: torchrun's own
report).
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    try:
        torchrun()
    except ChildFailedError as failed:
        if os.environ.get("PRISM_DEBUG") == "1":
            raise
        ranks = ", ".join(f"rank {rank} (exit code {failure.exitcode})"
                          for rank, failure in sorted(failed.failures.items()))
        print(f"prism: worker processes failed: {ranks}; their errors are printed above", file=sys.stderr)
        _, first = failed.get_first_failure()
        sys.exit(first.exitcode if isinstance(first.exitcode, int) and first.exitcode > 0 else 1)


if __name__ == "__main__":
    main()
