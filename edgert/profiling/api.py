"""``profile``: latency, per-op breakdown, timeline, bandwidth, memory and energy of one or more
artifacts (and optionally onnxruntime on the source model), measured in this process.

    result = edgert.profile("model.edgert", runs=200)
    result.results[0].latency_ms["p99"]
    result.to_json()            # the documented "edgert.profile/1" object
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgert.errors import InputError
from edgert.profiling import bandwidth, inputs, llm, memory, ops, stats
from edgert.profiling.machine import machine_info

Progress = Callable[[str, int, int], None]
"""``progress(stage, done, total)``: called as the runs go (stage: ``"runs"``, ``"ops"``...)."""

PEER = "onnxruntime"
ORT_TYPES = {"tensor(float)": "float32", "tensor(int64)": "int64", "tensor(int8)": "int8",
             "tensor(uint8)": "uint8", "tensor(int32)": "int32", "tensor(bool)": "bool",
             "tensor(float16)": "float16", "tensor(double)": "float64"}
"""onnxruntime's input type strings -> numpy dtype names."""


@dataclass
class ArtifactProfile:
    """What was measured for one artifact (times in milliseconds, sizes in bytes).

    ``latencies_ms`` holds every timed run; ``trace`` the Chrome-trace events of the recorded
    runs (:mod:`.trace`); ``energy`` the energy helper's JSON (``method`` ``"modelled"`` or
    ``"measured"``) or None when no estimate could be made (``energy_note`` says why)."""

    artifact: str
    batch: int
    latencies_ms: np.ndarray
    latency_ms: dict[str, float]
    throughput_per_s: float
    input_shapes: dict[str, list[int]]
    ops: list[ops.OpRow] = field(default_factory=list)
    ops_note: str = ""
    trace: list[dict[str, Any]] = field(default_factory=list)
    bandwidth: dict[str, Any] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)
    energy: dict[str, Any] | None = None
    energy_note: str = ""
    compare: dict[str, Any] | None = None
    llm: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """This result as the ``results[]`` entry of the ``edgert.profile/1`` JSON."""
        hist_counts, hist_edges, hist_scale = stats.histogram(self.latencies_ms)
        out = {"artifact": self.artifact, "batch": self.batch, "input_shapes": self.input_shapes,
               "runs": int(self.latencies_ms.size), "latency_ms": self.latency_ms,
               "throughput_per_s": self.throughput_per_s,
               "latency_histogram": {"counts": hist_counts, "edges_ms": hist_edges,
                                     "scale": hist_scale},
               "ops": [r.to_json() for r in self.ops],
               "op_types": ops.by_op_type(self.ops), "bandwidth": self.bandwidth,
               "memory": self.memory, "energy": self.energy}
        if self.ops_note:
            out["ops_note"] = self.ops_note
        if self.energy_note:
            out["energy_note"] = self.energy_note
        if self.compare is not None:
            out["compare"] = self.compare
        if self.llm is not None:
            out["llm"] = self.llm
        return out


@dataclass
class ProfileResult:
    """The profile of one or more artifacts measured together (see :func:`profile`)."""

    machine: dict[str, Any]
    settings: dict[str, Any]
    results: list[ArtifactProfile]

    @property
    def latency_ms(self) -> dict[str, float]:
        """The first artifact's latency statistics (ms)."""
        return self.results[0].latency_ms

    def to_json(self) -> dict[str, Any]:
        """The documented, versioned JSON object (``"schema": "edgert.profile/1"``; see
        ``edgert/data/profile.schema.json`` and docs/profiling.md)."""
        from edgert.profiling.report_json import to_json

        return to_json(self)

    def trace_events(self) -> list[dict[str, Any]]:
        """All artifacts' Chrome-trace events (one process id per artifact)."""
        return [e for r in self.results for e in r.trace]


def profile(session_or_path: Any, *more: Any, runs: int = 100, warmup: int = 10,
            threads: int | None = None, batch: int = 1,
            inputs_given: Mapping[str, np.ndarray] | None = None,
            compare: str | os.PathLike | None = None, energy: bool = True,
            energy_table: str | os.PathLike | None = None,
            power_csv: str | os.PathLike | None = None,
            prompt_tokens: int | None = None, gen_tokens: int | None = None,
            trace_runs: int = 1, progress: Progress | None = None) -> ProfileResult:
    """Profile artifacts: ``runs`` timed runs of each after ``warmup``, interleaved across the
    artifacts (and onnxruntime with ``compare``) so that machine load hits all alike.

    Args:
        session_or_path, more: :class:`edgert.Session` s or ``.edgert`` paths.
        runs, warmup: timed and untimed runs of each (>= 1 and >= 0).
        threads: worker threads of the sessions opened here and of onnxruntime.
        batch: size of a symbolic first axis of inputs made up here.
        inputs_given: arrays by input name; the other inputs are random (:mod:`.inputs`).
        compare: an ONNX model (the artifact's source) run by onnxruntime on the same feed.
        energy: estimate or measure the energy per inference (``edgert.energy``).
        energy_table, power_csv: passed to ``edgert.energy.profile_energy``.
        prompt_tokens, gen_tokens: decoder artifacts: ``pp``/``tg`` rates (defaults 64/16);
            their latency runs time one generation step after ``prompt_tokens`` positions.
        trace_runs: runs recorded kernel by kernel for the timeline.
        progress: see :data:`Progress`.

    Raises:
        InputError: bad counts, inputs that cannot be made, a compare model whose inputs
            differ. ArtifactError/TargetError: as :class:`edgert.Session`.
    """
    if runs < 1 or warmup < 0 or trace_runs < 1:
        raise InputError(f"--runs must be >= 1 and --warmup >= 0 (got {runs}, {warmup})")
    tick = progress or (lambda *_: None)
    sessions, load_rss = _open([session_or_path, *more], threads)
    pp_n, tg_n = prompt_tokens or 64, gen_tokens if gen_tokens is not None else 16
    feeds = [_feed_for(s, batch, inputs_given, pp_n) for s in sessions]
    _check_given(sessions, inputs_given)
    labels = _labels(sessions)
    candidates: dict[str, Callable[[], object]] = {
        label: (lambda s=s, f=f: s.run(None, f)) for label, s, f in zip(labels, sessions, feeds)}
    if compare is not None:
        peer = _peer(compare, threads, sessions[0], feeds[0])
        candidates[PEER] = lambda: peer.run(None, feeds[0])
    peak_reset = memory.reset_peak()
    times = _time_interleaved(candidates, runs, warmup, tick)
    peak = memory.peak_resident_bytes()
    roofline = bandwidth.read_bandwidth_gbps()
    results = []
    for i, (label, sess, feed) in enumerate(zip(labels, sessions, feeds)):
        tick("details", i, len(sessions))
        res = _measured(sess, feed, times[label])
        _breakdown(res, sess, feed, runs, trace_runs, pid=i)
        weights = memory.weight_bytes(sess._artifact)[0]
        res.bandwidth = bandwidth.achieved_bandwidth(weights, float(np.median(times[label])),
                                                     roofline)
        res.memory = memory.memory_report(sess._artifact, load_rss[i], peak, peak_reset)
        if energy:
            res.energy, res.energy_note = _energy(sess, lambda s=sess, f=feed: s.run(None, f),
                                                  runs, feed, energy_table, power_csv)
        if compare is not None:
            res.compare = _comparison(compare, times[PEER], times[label], res.batch)
        if llm.is_decoder(sess):
            tick("llm", 0, 1)
            res.llm = llm.decoder_rates(sess, pp_n, tg_n, repeats=min(runs, 5))
        results.append(res)
    tick("details", len(sessions), len(sessions))
    settings = {"runs": runs, "warmup": warmup, "threads": threads, "batch": batch,
                "interleaved": len(candidates) > 1, "trace_runs": trace_runs}
    if any(r.llm for r in results):
        settings.update(prompt_tokens=pp_n, gen_tokens=tg_n)
    return ProfileResult(machine_info(threads or _threads_of(sessions[0]), roofline),
                         settings, results)


def _open(items: Sequence[Any], threads: int | None) -> tuple[list[Any], list[int | None]]:
    """Sessions of ``items`` (sessions or paths) and the resident memory each one's loading
    added (None for a session given already open)."""
    from edgert.session import Session

    sessions, load_rss = [], []
    for item in items:
        before = memory.resident_bytes()
        sess = item if isinstance(item, Session) else Session(item, threads=threads)
        after = memory.resident_bytes()
        sessions.append(sess)
        load_rss.append(None if before is None or after is None or sess is item
                        else max(after - before, 0))
    return sessions, load_rss


def _time_interleaved(candidates: dict[str, Callable[[], object]], runs: int, warmup: int,
                      tick: Progress) -> dict[str, np.ndarray]:
    """:func:`edgert.timing.interleaved_latencies` of the candidates, reporting progress after
    each timed run of the first."""
    from edgert.timing import interleaved_latencies

    done = [0]
    first = next(iter(candidates))
    inner = candidates[first]

    def counted() -> object:
        result = inner()
        done[0] += 1
        if done[0] > warmup:
            tick("runs", done[0] - warmup, runs)
        return result

    return interleaved_latencies({**candidates, first: counted}, repeats=runs, warmup=warmup)


def _measured(sess: Any, feed: Mapping[str, np.ndarray], seconds: np.ndarray) -> ArtifactProfile:
    """The latency part of an artifact's profile."""
    rows = _rows_of(feed, sess)
    return ArtifactProfile(
        artifact=str(sess._artifact.path), batch=rows, latencies_ms=seconds * 1e3,
        latency_ms=stats.latency_stats(seconds),
        throughput_per_s=stats.throughput_per_s(seconds, rows),
        input_shapes={k: list(np.shape(v)) for k, v in feed.items()})


def _feed_for(sess: Any, batch: int, given: Mapping[str, np.ndarray] | None,
              past_tokens: int) -> dict[str, np.ndarray]:
    names = {i.name for i in sess.get_inputs()}
    mine = {k: v for k, v in (given or {}).items() if k in names}
    if llm.is_decoder(sess) and not mine:
        return llm.decode_step_feed(sess, past_tokens)
    ranges = {d["name"]: d["range"] for d in sess.manifest.get("inputs", []) if d.get("range")}
    return inputs.random_feed(sess.get_inputs(), batch=batch, given=mine, ranges=ranges)


def _check_given(sessions: Sequence[Any], given: Mapping[str, np.ndarray] | None) -> None:
    names = {i.name for s in sessions for i in s.get_inputs()}
    unknown = sorted(set(given or {}) - names)
    if unknown:
        raise InputError(f"unknown input(s) {', '.join(map(repr, unknown))}; the model's "
                         f"inputs are {', '.join(sorted(names))}")


def _labels(sessions: Sequence[Any]) -> list[str]:
    labels = []
    for s in sessions:
        label = str(s._artifact.path)
        while label in labels or label == PEER:
            label += "'"
        labels.append(label)
    return labels


def _rows_of(feed: Mapping[str, np.ndarray], sess: Any) -> int:
    """Samples per run: the first input's first axis when it is symbolic, else 1."""
    spec = sess.get_inputs()[0]
    value = feed[spec.name]
    if spec.shape and not isinstance(spec.shape[0], int) and np.ndim(value) and \
            not llm.is_decoder(sess):
        return int(np.shape(value)[0])
    return 1


def _threads_of(sess: Any) -> int | None:
    return getattr(getattr(sess, "_backend", None), "threads", None)


def _breakdown(res: ArtifactProfile, sess: Any, feed: Mapping[str, np.ndarray], runs: int,
               trace_runs: int, pid: int) -> None:
    """Fill ``res.ops`` and ``res.trace`` (or ``ops_note`` when the backend cannot)."""
    from edgert.errors import TargetError
    from edgert.profiling.trace import trace_events

    try:
        times = _kernel_medians(sess, feed, runs)
        calls = sess.kernel_calls(feed, runs=trace_runs)
    except (InputError, TargetError) as e:
        res.ops_note = f"no per-op breakdown: {e}"
        return
    nodes = ops.graph_nodes(sess._artifact.model_bytes)
    if not nodes:
        res.ops_note = "ONNX node names need the onnx package; kernel names only"
    first = [c.name for c in calls if c.run == 0]
    mapped = ops.map_calls_to_nodes(first, nodes) if nodes else [[] for _ in first]
    res.ops = ops.op_rows(times, first, nodes, mapped)
    summed, plain = sum(r.ms for r in res.ops), res.latency_ms["p50"]
    if summed > INSTRUMENT_SLACK * plain:
        res.ops_note = (f"the kernels timed one by one sum to {summed:.4g} ms, "
                        f"{summed / plain:.1f}x a plain run's p50 ({plain:.4g} ms): the VM "
                        "instrument slows this model's calls (thread-pool wake-ups between "
                        "kernels); read the shares, not the absolute ms")
    per_call = [mapped[j % len(first)] if first else [] for j in range(len(calls))]
    types = {r.name: r.op_type for r in res.ops}
    res.trace = trace_events(calls, per_call, types, pid=pid, label=res.artifact)


INSTRUMENT_SLACK = 1.3
"""Kernels summing to more than this times a plain run's p50 get an ``ops_note``."""
KERNEL_CHUNKS = 5
"""``Session.kernel_times`` is called this many times; each kernel's time is the median."""


def _kernel_medians(sess: Any, feed: Mapping[str, np.ndarray], runs: int) -> list[Any]:
    """:meth:`edgert.Session.kernel_times` over about ``min(runs, 50)`` runs in
    :data:`KERNEL_CHUNKS` chunks, each kernel's milliseconds the median of the chunks' (a
    stall of a busy machine moves one chunk's mean, not the median)."""
    from edgert.backends.tvm_vm import KernelTime

    per_chunk = max(1, min(runs, 50) // KERNEL_CHUNKS)
    chunks = [sess.kernel_times(feed, repeats=per_chunk)
              for _ in range(KERNEL_CHUNKS if runs > 1 else 1)]
    first = chunks[0]
    ms = {k.name: [] for k in first}
    for chunk in chunks:
        for k in chunk:
            ms.setdefault(k.name, []).append(k.ms)
    return [KernelTime(k.name, k.calls, float(np.median(ms[k.name]))) for k in first]


def _energy(sess: Any, run_once: Callable[[], object], runs: int,
            feed: Mapping[str, np.ndarray], table: Any, power_csv: Any
            ) -> tuple[dict[str, Any] | None, str]:
    """The energy helper's estimate as JSON, or None and why not."""
    try:
        from edgert.energy import profile_energy
    except ImportError as e:
        return None, f"energy not estimated: edgert.energy is unavailable ({e})"
    from edgert.errors import EdgertError

    try:
        result = profile_energy(sess, run_once, runs=runs,
                                input_shapes={k: tuple(np.shape(v)) for k, v in feed.items()},
                                power_csv=power_csv, table=table)
    except EdgertError:
        raise                                       # the user's table or CSV: one-line error
    except Exception as e:                          # a graph the energy model cannot count
        return None, f"energy not estimated: {type(e).__name__}: {e}"
    return result.to_json(), ""


def _peer(model: str | os.PathLike, threads: int | None, sess: Any,
          feed: Mapping[str, np.ndarray]) -> Any:
    """onnxruntime on ``model``, checked to take the same inputs as the artifact."""
    from edgert.peers import onnxruntime_session

    path = Path(model)
    if not path.is_file():
        raise InputError(f"--compare {model}: no such file")
    try:
        peer = onnxruntime_session(path, threads or _threads_of(sess))
    except Exception as e:                                   # onnxruntime's own errors
        raise InputError(f"--compare {model}: onnxruntime cannot load it ({e})") from None
    theirs = {i.name: ORT_TYPES.get(i.type, i.type) for i in peer.get_inputs()}
    ours = {k: str(v.dtype) for k, v in feed.items()}
    if theirs != ours:
        raise InputError(f"--compare {model}: its inputs {theirs} differ from the artifact's "
                         f"{ours} (compare with the ONNX model the artifact was compiled from)")
    return peer


def _comparison(model: str | os.PathLike, peer_s: np.ndarray, ours_s: np.ndarray,
                rows: int) -> dict[str, Any]:
    peer_stats = stats.latency_stats(peer_s)
    ours = stats.latency_stats(ours_s)
    return {"runtime": PEER, "model": str(model), "latency_ms": peer_stats,
            "throughput_per_s": stats.throughput_per_s(peer_s, rows),
            "speedup_p50": peer_stats["p50"] / ours["p50"] if ours["p50"] else None}
