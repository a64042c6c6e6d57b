"""Space-time attention: vpengine backends vs ref, FlexAttention (soft-cap) and SDPA + permutes (issue 3).

The cases live in vpengine/bench/suites/spacetime_attention.py (shared with `vpengine bench --suite spacetime_attention`).
"""
SUITE = "spacetime_attention"


def test_spacetime_attention(run_case, case):
    run_case(case)
