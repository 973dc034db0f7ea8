"""Target registry: names, host resolution, TVM target dicts, can-run checks."""

from __future__ import annotations

import pytest

from edgert.errors import TargetError
from edgert.targets import TARGETS, can_run_here, get_target, host_arch

REQUIRED = {"x86-avx2", "x86-avx512", "aarch64", "rpi5", "cuda-sm80", "cuda-sm90"}


def test_required_targets_known():
    assert REQUIRED <= set(TARGETS)


def test_host_resolves_to_a_target_that_runs_here():
    host = get_target("host")
    assert host.arch == host_arch()
    assert can_run_here(host) == (True, "")


def test_unknown_target_lists_known_ones():
    with pytest.raises(TargetError, match="unknown target 'pi9'.*rpi5"):
        get_target("pi9")


def test_tvm_target_dicts():
    rpi5 = get_target("rpi5").tvm_target_dict(num_cores=4)
    assert rpi5["mtriple"] == "aarch64-linux-gnu" and rpi5["mcpu"] == "cortex-a76"
    assert "+dotprod" in rpi5["mattr"] and rpi5["num-cores"] == 4
    cuda = get_target("cuda-sm90").tvm_target_dict()
    assert cuda["kind"] == "cuda" and cuda["arch"] == "sm_90" and cuda["host"]["kind"] == "llvm"
    assert "num-cores" not in get_target("rpi5").llvm  # the registry entry is not mutated


def test_tvm_accepts_every_target():
    import tvm

    for t in TARGETS.values():
        assert tvm.target.Target(t.tvm_target_dict()).kind.name in ("llvm", "cuda")


@pytest.mark.skipif(host_arch() != "x86_64", reason="checks an x86-64 host")
def test_arm_targets_do_not_run_on_x86():
    ok, why = can_run_here(get_target("rpi5"))
    assert not ok and "aarch64" in why
