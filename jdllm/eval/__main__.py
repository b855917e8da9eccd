"""`python -m jdllm.eval ...`: the same as `jdllm eval ...`."""

import sys

from jdllm.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", *sys.argv[1:]]))
