"""Retry backoff, the one formula: prediction retries (workers/recording.py) and webhook
retries (workers/webhooks/delivery.py) both wait `retry_delay`.

After failed attempt n the wait is drawn uniformly from [least * c, c], where the ceiling
c = min(cap, base * 2^(n-1)) doubles with each attempt up to the cap. `least` is how much of
the ceiling is always waited: 0 is full jitter (AWS's backoff advice: it spreads retries the
most), and a fraction like 3/4 still spreads them yet makes each wait, below the cap, clearly
longer than the one before.

One copy of the formula lives in SQL: a bulk UPDATE gives each row its own attempt count, so
`requeue_lost` in db/repositories/predictions.py computes the same full-jitter delay in the
statement (least(cap, base * power(2, attempts - 1)) * random()). Change both together.
"""

import random


def ceiling(attempt: int, base_s: float, cap_s: float) -> float:
    """The most attempt `attempt` (1 for the first) waits: min(cap, base * 2^(attempt-1))."""
    return min(cap_s, base_s * 2.0 ** (attempt - 1))


def retry_delay(attempt: int, base_s: float, cap_s: float, *, least: float = 0.0) -> float:
    """The wait after failed attempt `attempt`: uniform in [least * c, c], c = ceiling(...)."""
    top = ceiling(attempt, base_s, cap_s)
    return random.uniform(least * top, top)  # noqa: S311
