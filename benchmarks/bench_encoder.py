"""VideoPrism encoder forward: vpengine vs ref, torch.compile(ref) and HF transformers (issues 2, 5).

The cases live in vpengine/bench/suites/encoder.py (shared with `vpengine bench --suite encoder`).
"""
SUITE = "encoder"


def test_encoder(run_case, case):
    run_case(case)
