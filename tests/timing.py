"""How much slower than usual this test run may be: `TEST_TIME_SCALE` (`./dev asan` sets it, since
AddressSanitizer slows native code several times). Budgets and time limits in tests are multiplied by it."""

from __future__ import annotations

import os

SCALE = float(os.environ.get("TEST_TIME_SCALE", "1"))

# Running under AddressSanitizer (`./dev asan` preloads it and sets its options).
SANITIZED = "ASAN_OPTIONS" in os.environ
