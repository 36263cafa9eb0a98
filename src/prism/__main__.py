"""`python -m prism`: the prism command line, also what each process torchrun starts runs.

prism's launcher (prism.engine.launch) starts ``torchrun ... -m prism`` with the original
arguments in PRISM_WORKER_ARGV (torchrun's own parser would take prism's options for its
own); a worker started with no arguments of its own runs those.
"""

import json
import os
import sys

from prism.cli.app import main as cli_main
from prism.engine.launch import ARGV_ENV


def main() -> None:
    worker_argv = os.environ.get(ARGV_ENV)
    cli_main(json.loads(worker_argv) if worker_argv is not None and not sys.argv[1:] else None)


if __name__ == "__main__":
    main()
