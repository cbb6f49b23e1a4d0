import sys

from pe_server.cli import main

sys.exit(main())
