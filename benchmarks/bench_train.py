"""One training step of the video encoder (forward, backward, AdamW): vpengine vs ref and torch.compile (issue 5).

The cases live in vpengine/bench/suites/train.py (shared with `vpengine bench --suite train`).
"""
SUITE = "train"


def test_train(run_case, case):
    run_case(case)
