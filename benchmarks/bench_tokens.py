"""Token gather/scatter/shuffle and the fused decoder input vs plain PyTorch indexing (issue 4).

The cases live in vpengine/bench/suites/tokens.py (shared with `vpengine bench --suite tokens`).
"""
SUITE = "tokens"


def test_tokens(run_case, case):
    run_case(case)
