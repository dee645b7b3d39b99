"""How the randomized tests draw: the same draws in ``make test``, new ones in ``make test-random``.

``make test`` must be reproducible, so that what it catches does not change from run to
run: hypothesis runs under the ``ci`` profile (``derandomize=True``: the examples are a
function of the test alone), and the tests that draw with :mod:`random` start from fixed
seeds. ``make test-random`` sets ``HYPOTHESIS_PROFILE=random`` (a new seed every run, the
failures kept in ``.hypothesis/``), ``BRANCHFS_SEED`` (printed in pytest's header, so a
failing run can be replayed) and ``BRANCHFS_EXAMPLES_SCALE`` (more examples per test).

Every failure either run finds is kept as a test: an ``@example`` on the hypothesis test,
or a seed added to the fixed list of the :mod:`random`-based test.
"""

from __future__ import annotations

import os

#: Set by ``make test-random``; unset in ``make test`` (the fixed seeds are used).
RUN_SEED: int | None = int(os.environ["BRANCHFS_SEED"]) if os.environ.get("BRANCHFS_SEED") else None

#: How many times more examples than in ``make test`` each randomized test runs.
SCALE = float(os.environ.get("BRANCHFS_EXAMPLES_SCALE", "1"))


def seed(fixed: int) -> int:
    """The seed of one :mod:`random`-based draw: ``fixed`` in ``make test``, a run-dependent
    one derived from ``BRANCHFS_SEED`` and ``fixed`` in ``make test-random``."""
    return fixed if RUN_SEED is None else RUN_SEED * 1_000_003 + fixed


def examples(n: int) -> int:
    """The example count of a test that runs ``n`` examples in ``make test``."""
    return max(1, round(n * SCALE))
