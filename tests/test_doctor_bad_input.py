"""lab.doctor's public names take no argument: nothing a caller passes can be wrong (``CASES`` is empty, and
`tests.test_public_api` checks that ``NO_INPUT`` names every one)."""

from __future__ import annotations

from tests.bad_input import Bad

CASES: dict[str, list[Bad]] = {}

NO_INPUT: dict[str, str] = {name: "takes no argument: it reports on this machine"
                            for name in ("versions", "triton_mode", "paths", "kernels", "summary", "report")}
