from __future__ import annotations

from hypothesis import settings

# No per-example deadline: on a loaded 2-core CI machine a slow example is not a bug, and
# hypothesis' default 200 ms deadline turns load into flaky failures.
settings.register_profile("pollen", deadline=None)
settings.load_profile("pollen")
