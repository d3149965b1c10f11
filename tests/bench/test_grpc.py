"""The gRPC benchmark's pure parts: the ratios to Ray Serve and the targets."""

from __future__ import annotations

from bench.grpc import checks, compare


def _row(system: str, case: str, rps: float, p50: float, p99: float, errors: int = 0) -> dict:
    return {"system": system, "case": case, "throughput_rps": rps, "p50_ms": p50,
            "p99_ms": p99, "errors": errors}


def test_ratios_and_targets_per_case():
    rows = [_row("modelplex", "noop", 1200, 12, 30), _row("ray", "noop", 200, 70, 150),
            _row("modelplex", "multiplexed", 500, 20, 60, errors=1),
            _row("ray", "multiplexed", 200, 80, 150)]
    ratios = compare(rows)
    assert ratios["noop"] == {"rps_ratio": 6.0, "p50_ratio": 0.171, "p99_ratio": 0.2,
                              "targets_met": {"rps_3x": True, "p99_third": True}}
    # A run with errors meets no target, however fast.
    assert ratios["multiplexed"]["targets_met"] == {"rps_3x": False, "p99_third": False}
    assert [c["met"] for c in checks(ratios)] == [True, True, False, False]


def test_a_case_one_system_missed_has_no_ratio():
    assert compare([_row("modelplex", "noop", 1, 1, 1)]) == {}
