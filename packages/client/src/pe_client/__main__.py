"""``python -m pe_client``: the pe-client command line."""

import sys

from pe_client.cli import main

sys.exit(main())
