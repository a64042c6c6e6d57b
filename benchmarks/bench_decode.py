"""Decode + sample + resize to 16x288x288 from 360p/720p H.264 (issue 6).

The cases live in vpengine/bench/suites/decode.py (shared with `vpengine bench --suite decode`).
"""
SUITE = "decode"


def test_decode(run_case, case):
    run_case(case)
