"""``python -m pagent_provider.cli``: the same as the ``pagent-conversions`` command."""

import sys

from pagent_provider.cli import main

if __name__ == "__main__":
    sys.exit(main())
