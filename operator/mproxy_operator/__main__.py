"""`python -m mproxy_operator`: the same as `mproxy operator`."""

import sys

from mproxy_operator.main import main

sys.exit(main(prog="python -m mproxy_operator"))
