"""Entry point of the parser child process (`python -m mssante_operator.directory.parse_child`).

A module of its own: the package imports `parse_worker`, so running that one as `__main__` would
load it twice.
"""

import sys

from mssante_operator.directory.parse_worker import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
