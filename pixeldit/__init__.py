"""`import pixeldit` is `import pixeldit_cli`: one package, two names (the distribution is `pixeldit`;
the CLI module kept its first name). `pixeldit.X` is the very module `pixeldit_cli.X`."""

import sys

import pixeldit_cli

sys.modules[__name__] = pixeldit_cli
