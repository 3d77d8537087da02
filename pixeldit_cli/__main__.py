"""`python -m pixeldit_cli` is the same CLI as `pixeldit` (so `torchrun -m pixeldit_cli -- sample ...` works)."""

import sys

from .cli import main

if __name__ == "__main__":
    # torchrun passes a literal `--` through when users separate its options from ours; drop it.
    if len(sys.argv) > 1 and sys.argv[1] == "--":
        del sys.argv[1]
    main()
