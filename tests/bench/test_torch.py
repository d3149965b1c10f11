"""bench.torch's pure parts: load lines to hit rate and threads, the adapter client's event
parsing and figures, the modelplex/Ray ratios and targets."""

from __future__ import annotations

import json

from bench.adapter_load import Completion, parse_events, summarize_completions
from bench.torch import compare, mlp_checks, replica_threads, summarize_loads


def _load(pid: int, os_threads: int, torch_threads: int, load_ms: float = 10.0) -> dict:
    return {"pid": pid, "os_threads": os_threads, "torch_threads": torch_threads,
            "load_ms": load_ms, "model": "m", "t": 0.0}


def test_hit_rate_and_threads_from_the_replicas_load_lines():
    loads = [_load(1, 12, 1, 8.0), _load(1, 14, 1, 12.0), _load(2, 13, 2, 30.0)]
    assert summarize_loads(loads, 12) == {"loads": 3, "hit_rate": 0.75, "load_p50_ms": 12.0}
    assert summarize_loads([], 0)["hit_rate"] == 0.0
    assert replica_threads(loads) == "13/2, 14/1"  # the most each replica had, by OS threads


def _sse(text: str) -> str:
    return "data: " + json.dumps({"choices": [{"text": text, "index": 0}]}) + "\n"


def test_parse_events_counts_tokens_and_sees_the_end():
    lines = [_sse("the"), "\n", _sse(" sea"), _sse(""), "data: [DONE]\n"]
    assert parse_events(lines) == (["the", " sea"], True)
    assert parse_events([_sse("the")]) == (["the"], False)  # cut short


def test_completion_figures_leave_failures_out_of_tokens_and_ttft():
    done = [Completion(0.1, 1.0, 16, None), Completion(0.3, 2.0, 16, None),
            Completion(None, 0.5, 0, "503 busy")]
    figures = summarize_completions(done, 2.0)
    assert (figures["tokens"], figures["tokens_per_s"], figures["errors"]) == (32, 16.0, 1)
    assert figures["ttft_p50_ms"] == 100.0 and figures["ttft_p99_ms"] == 300.0
    assert figures["error_causes"] == {"503 busy": 1}


def _mlp(system: str, rps: float, p99: float, errors: int = 0, policy: str = "lru") -> dict:
    return {"scenario": "mlp", "system": system, "policy": policy, "throughput_rps": rps,
            "p50_ms": p99 / 2, "p99_ms": p99, "hit_rate": 0.5, "errors": errors}


def test_ratios_and_targets_compare_modelplex_lru_with_ray():
    rows = [_mlp("modelplex", 300.0, 100.0), _mlp("modelplex", 900.0, 10.0, policy="tinylfu"),
            _mlp("ray", 100.0, 300.0),
            {"scenario": "adapters", "system": "modelplex", "tokens_per_s": 200.0,
             "ttft_p50_ms": 100.0, "ttft_p99_ms": 400.0, "errors": 0},
            {"scenario": "adapters", "system": "ray", "tokens_per_s": 100.0,
             "ttft_p50_ms": 400.0, "ttft_p99_ms": 800.0, "errors": 0}]
    ratios = compare(rows)
    assert ratios["mlp"]["throughput_ratio"] == 3.0 and ratios["mlp"]["p99_ratio"] == 0.333
    assert ratios["mlp"]["targets_met"] == {"throughput_3x": True, "p99_third": True}
    assert ratios["adapters"] == {"tokens_per_s_ratio": 2.0, "ttft_p50_ratio": 0.25,
                                  "ttft_p99_ratio": 0.5}
    assert [c["met"] for c in mlp_checks(ratios)] == [True, True]


def test_a_run_with_errors_meets_no_target_and_a_missing_system_no_ratio():
    ratios = compare([_mlp("modelplex", 900.0, 10.0, errors=1), _mlp("ray", 100.0, 300.0)])
    assert ratios["mlp"]["targets_met"] == {"throughput_3x": False, "p99_third": False}
    assert compare([_mlp("modelplex", 900.0, 10.0)]) == {}
    assert mlp_checks({}) == []
