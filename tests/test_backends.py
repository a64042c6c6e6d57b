"""use_backend(): which blocks are in force while an op runs."""
from vpengine import backends
from vpengine.ops import use_backend


def test_blocks_closing_out_of_order_keep_their_own_choice():
    """Blocks held open by generators (or coroutines) on one thread may close
    in any order; each must remove its own entry, not the innermost one."""

    def block(name):
        with use_backend(name):
            while True:
                yield backends.forced_backend()

    a, b = block("ref"), block("cpu")
    assert next(a) == "ref" and next(b) == "cpu"
    a.close()  # leaves b's block open
    assert next(b) == "cpu"
    b.close()
    assert backends.backend_choices() == ()

