import sys

from mtl.bench.cli import main

if __name__ == "__main__":  # spawned trial processes re-import this module as __mp_main__
    sys.exit(main())
