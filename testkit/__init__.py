"""Helpers shared by the test suite and the benchmarks (never shipped in the model archive).

``corpus`` and ``imaging`` make payloads, ``student`` a tiny TorchScript student, ``server``
starts real TorchServe on loopback ports, ``load`` sends bounded bursts of requests and
``photos`` makes real one-face photos. ``tests/`` and ``bench/`` both import from here, so
neither depends on the other.
"""
