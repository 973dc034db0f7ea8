"""Thread policies: importing edgert sets the chosen policy's TVM variables as defaults (a
variable the user set wins), and the policy changes how the pool waits, never the outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from edgert.threads import DEFAULT_POLICY, POLICIES, AdaptiveThreads, idle_cpu_seconds

TVM_VARS = ("TVM_NUM_THREADS", "TVM_BIND_THREADS", "TVM_THREAD_POOL_SPIN_COUNT",
            "TVM_EXCLUDE_WORKER0")


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in TVM_VARS and k not in ("EDGERT_THREAD_POLICY", "OMP_NUM_THREADS")}
    return {**env, **extra}


def _tvm_env_after_import(env: dict[str, str]) -> tuple[dict[str, str], str]:
    code = ("import json, os, edgert; "
            "print(json.dumps({k: v for k, v in os.environ.items() if k.startswith('TVM_')}))")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True, timeout=60)
    return json.loads(done.stdout), done.stderr


def _without_num_threads(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k != "TVM_NUM_THREADS"}


def test_the_default_policy_sets_its_tvm_variables():
    got, _ = _tvm_env_after_import(_clean_env())
    assert _without_num_threads(got) == POLICIES[DEFAULT_POLICY]


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_a_named_policy_sets_exactly_its_variables(name):
    got, _ = _tvm_env_after_import(_clean_env(EDGERT_THREAD_POLICY=name))
    assert _without_num_threads(got) == POLICIES[name]


def test_a_users_tvm_variable_wins_over_the_policy():
    mine = {"TVM_THREAD_POOL_SPIN_COUNT": "12345", "TVM_BIND_THREADS": "1"}
    got, _ = _tvm_env_after_import(_clean_env(**mine))
    assert _without_num_threads(got) == {**POLICIES[DEFAULT_POLICY], **mine}


def test_an_unknown_policy_warns_and_uses_the_default():
    got, err = _tvm_env_after_import(_clean_env(EDGERT_THREAD_POLICY="fastest"))
    assert "EDGERT_THREAD_POLICY='fastest'" in err
    assert _without_num_threads(got) == POLICIES[DEFAULT_POLICY]


def _drive(chooser: AdaptiveThreads, runs: int, seconds: dict[int, float]) -> list[int]:
    counts = []
    for _ in range(runs):
        count = chooser.next_count()
        chooser.record(count, seconds[count])
        counts.append(count)
    return counts


def test_adaptive_takes_one_thread_while_all_are_slower_and_comes_back():
    chooser = AdaptiveThreads(4)
    quiet = _drive(chooser, 200, {4: 1e-4, 1: 3e-4})
    assert quiet[:2] == [4, 4] and quiet[2:5] == [1, 1, 1] and chooser.best == 4
    assert quiet.count(1) <= 3 * 4                 # tries every 32, 64, ... runs
    busy = _drive(chooser, 2000, {4: 5e-3, 1: 3e-4})
    assert chooser.best == 1 and busy[-100:].count(1) >= 97
    assert busy.count(4) <= 5 + 3 * 8              # the window, then tries with a growing gap
    _drive(chooser, 2100, {4: 1e-4, 1: 3e-4})
    assert chooser.best == 4


class _Machine:
    """A fake clock and /proc/stat: runs advance the clock; ``idle_cpus`` CPUs sit idle."""

    def __init__(self) -> None:
        self.now, self.idle_seconds, self.idle_cpus = 0.0, 0.0, 0.0

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.idle_seconds += self.idle_cpus * seconds


def _drive_on(machine: _Machine, chooser: AdaptiveThreads, runs: int,
              seconds: dict[int, float]) -> list[int]:
    counts = []
    for _ in range(runs):
        count = chooser.next_count()
        chooser.record(count, seconds[count])
        machine.advance(seconds[count])
        counts.append(count)
    return counts


def test_adaptive_goes_back_to_all_threads_once_the_other_cores_sit_idle():
    machine = _Machine()
    chooser = AdaptiveThreads(2, idle=lambda: machine.idle_seconds, clock=lambda: machine.now)
    busy = {2: 4e-3, 1: 2.4e-4}                 # a GEMV beside a busy process
    _drive_on(machine, chooser, 3000, busy)
    assert chooser.best == 1 and chooser.gap == AdaptiveThreads.MAX_GAP
    machine.idle_cpus = 1.0                     # the other process ends
    quiet = _drive_on(machine, chooser, 1000, {2: 1.8e-4, 1: 2.4e-4})
    # 1-thread runs of 0.24 ms: a probe every 50 ms finds the idle core within ~2 probes
    assert chooser.best == 2 and 2 in quiet[:2 * 210 + AdaptiveThreads.TRIES]
    assert quiet[-100:].count(2) >= 97


def test_adaptive_without_idle_cores_tries_only_at_its_gaps():
    machine = _Machine()                        # nothing idle: the probe never asks for a try
    probes = []

    def idle() -> float:
        probes.append(machine.now)
        return machine.idle_seconds

    chooser = AdaptiveThreads(2, idle=idle, clock=lambda: machine.now)
    counts = _drive_on(machine, chooser, 4000, {2: 4e-3, 1: 2.4e-4})
    assert chooser.best == 1 and counts.count(2) <= 5 + 3 * 8
    # at most one read per PROBE_SECONDS, plus the one that starts an interval after each try
    tries = (counts.count(2) - 5) // AdaptiveThreads.TRIES + 1
    assert 0 < len(probes) <= machine.now / AdaptiveThreads.PROBE_SECONDS + tries + 1


def test_adaptive_keeps_all_threads_when_one_is_barely_faster():
    chooser = AdaptiveThreads(2)
    counts = _drive(chooser, 500, {2: 2.0e-4, 1: 1.9e-4})     # within the noise: keep both
    assert chooser.best == 2 and counts[-100:].count(2) >= 97


def test_the_idle_probe_reads_this_machine():
    first = idle_cpu_seconds()
    if first is None:
        pytest.skip("no /proc/stat on this OS")
    assert first >= 0 and idle_cpu_seconds() >= first


def test_adaptive_with_one_thread_never_tries_more():
    assert set(_drive(AdaptiveThreads(1), 50, {1: 1e-4})) == {1}


def test_outputs_do_not_depend_on_the_policy(mlp_artifact, tmp_path):
    import edgert

    x = np.random.default_rng(3).standard_normal((16, 20)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    sess = edgert.Session(mlp_artifact, threads=2)
    runs = [sess.run(None, {sess.get_inputs()[0].name: x})[0] for _ in range(8)]
    for out in runs[1:]:                           # runs 3-5 try 1 thread under "adaptive"
        np.testing.assert_array_equal(out, runs[0])
    code = ("import sys, numpy as np, edgert; s = edgert.Session(sys.argv[1], threads=2); "
            "x = np.load(sys.argv[2]); np.save(sys.argv[3], s.run(None, {s.get_inputs()[0].name: x})[0])")
    other = "tvm" if DEFAULT_POLICY != "tvm" else "nospin"
    subprocess.run([sys.executable, "-c", code, str(mlp_artifact), str(tmp_path / "x.npy"),
                    str(tmp_path / "y.npy")], env=_clean_env(EDGERT_THREAD_POLICY=other),
                   check=True, timeout=120)
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), runs[0])
