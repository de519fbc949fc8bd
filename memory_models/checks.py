"""Argument checks of the cells' constructors, one message each.

    check_int("memory_size", memory_size)                      an int >= 1 (bool is not an int)
    check_int("state_size", n, minimum=2, even=True, why=" (N/2 conjugate pairs)")
    check_positive("theta", theta, why=" (window length in steps)")   a finite number > 0
    check_heads(heads, hidden_size)                            a positive int dividing the width

Each raises ValueError naming the argument, what it must be and the value it got.
"""

from __future__ import annotations

import math


def check_int(name: str, value, *, minimum: int = 1, even: bool = False, why: str = "") -> None:
    """value must be an int (not a bool) >= minimum, and even if `even`."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= minimum \
            and not (even and value % 2):
        return
    if even:
        what = f"an even int >= {minimum}"
    elif minimum == 1:
        what = "a positive int"
    else:
        what = f"an int >= {minimum}"
    raise ValueError(f"{name} must be {what}{why}, got {value!r}")


def check_positive(name: str, value, *, why: str = "") -> None:
    """value must be a finite real number (int or float, not a bool) > 0."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) \
            and math.isfinite(value) and value > 0:
        return
    raise ValueError(f"{name} must be a finite number > 0{why}, got {value!r}")


def default_heads(width: int, candidates: tuple[int, ...]) -> int:
    """The first of `candidates` (largest first, ending in 1) that divides `width`."""
    return next(n for n in candidates if width % n == 0)


def check_heads(heads, width: int, what: str = "hidden_size") -> None:
    """heads must be a positive int dividing `width` (named `what` in the message)."""
    check_int("heads", heads)
    if width % heads:
        divisors = [n for n in range(1, width + 1) if width % n == 0]
        raise ValueError(f"heads must divide {what} = {width} (allowed: {divisors}), "
                         f"got {heads}")
