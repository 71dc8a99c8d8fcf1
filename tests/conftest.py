"""Hypothesis profiles for the fuzz tests (tests/test_fuzz.py).

* ``ci`` (the default): >= 500 examples per op and per algorithm, derandomized so a CI run is
  reproducible, no example database (CI runs with ``-p no:cacheprovider`` and a clean tree).
* ``long``: >= 10,000 examples per algorithm, random seeds — the soak run
  (``pytest tests/test_fuzz.py --hypothesis-profile=long``).

Pick one with ``--hypothesis-profile=NAME`` (hypothesis' own pytest option, which overrides
the default loaded here).

The README runs ``pytest`` from the checkout's root, where the source folder ``fastconv/``
(without its compiled kernels) would shadow the installed package in every Python the tests
start (``python -c``, ``-m``): ``PYTHONSAFEPATH`` keeps the working directory off their path.
"""

import os

from hypothesis import HealthCheck, settings

os.environ["PYTHONSAFEPATH"] = "1"

_COMMON = dict(
    deadline=None,
    print_blob=True,
    # a shape strategy that rejects invalid draws is part of the sweep, not a bug
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)
settings.register_profile("ci", max_examples=500, derandomize=True, database=None, **_COMMON)
settings.register_profile("long", max_examples=10_000, **_COMMON)
settings.load_profile("ci")
