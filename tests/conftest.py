"""Suite-wide: launches in tests never leave a zygote daemon behind (tests of that feature turn it on)."""

import os

os.environ["ORCHESTRATE_ZYGOTE"] = "0"  # inherited by every CLI and controller the tests start
