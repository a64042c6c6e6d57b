"""uint8 frames to normalized patches in one pass vs the unfused PyTorch path (issue 6).

The cases live in vpengine/bench/suites/patchify.py (shared with `vpengine bench --suite patchify`).
"""
SUITE = "patchify"


def test_patchify(run_case, case):
    run_case(case)
