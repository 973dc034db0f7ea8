"""The ``edgert`` command line (also ``python -m edgert``).

Every user mistake ends in one line on stderr and a distinct exit code (see
:mod:`edgert.errors`); tracebacks are kept for real bugs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from edgert.backends import BACKENDS
from edgert.errors import EdgertError, InputError
from edgert.feeds import load_inputs, save_npz
from edgert.bundle.command import make_bundle_cli
from edgert.profiling.command import make_profile_cli

app = typer.Typer(
    help="edgert: compile ONNX models for edge devices (integer-only, low-bit) and run them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,          # click's formatter: help paragraphs rewrapped to the terminal
)
out = Console()
err = Console(stderr=True)

TargetOpt = Annotated[str, typer.Option("--target", "-t", help="Target name (see `edgert targets`); "
                                        "`host` is the CPU this command runs on.")]
ThreadsOpt = Annotated[Optional[int], typer.Option("--threads", min=1, help="Worker threads "
                                                   "(default: the physical cores).")]


@app.command()
def export(
    factory: Annotated[str, typer.Argument(help="MODULE:FACTORY, a Python module (or .py file) and "
                                           "a function returning (torch_module, example_inputs).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="ONNX file to write.")],
    static_batch: Annotated[bool, typer.Option("--static-batch", help="Keep the example's batch "
                                               "size fixed instead of a dynamic batch axis.")] = False,
    opset: Annotated[Optional[int], typer.Option(help="ONNX opset (default: the exporter's).")] = None,
) -> None:
    """Export a PyTorch model to ONNX (dynamic batch axis by default). Needs PyTorch (the `export` extra)."""
    from edgert.compiler.exporter import export as export_fn, load_factory

    module, example = load_factory(factory)
    path = export_fn(module, example, output, dynamic_batch=not static_batch, opset=opset)
    out.print(f"wrote {path}")


IntOnlyOpt = Annotated[bool, typer.Option(
    "--int-only", help="Rewrite the model into an integer-only graph (I-ViT ops, int8/int16 "
    "activations); needs --calib.")]
CalibOpt = Annotated[Optional[Path], typer.Option(
    help="Calibration inputs for --int-only: an .npz with one array per input (samples on axis "
    "0) or a directory of .npz/.npy files.")]
CalibMethodOpt = Annotated[str, typer.Option(
    help="How ranges are taken from the calibration data: minmax or percentile.")]
ActBitsOpt = Annotated[str, typer.Option(
    help="Activation dtypes: auto (int16 residual stream, LayerNorm and FFN inputs, int8 "
    "elsewhere), linear8 (as auto, but every Linear input int8: int8 x int8 matmuls), 8 or 16.")]
IoOpt = Annotated[Literal["float", "int8"], typer.Option(
    "--io", help="Graph I/O with --int-only: float (float32 in and out, quantized and "
    "dequantized inside the graph) or int8 = integer I/O (the integer tensors themselves: "
    "int8/int16 inputs, int8/int16/int32 outputs; their dtypes and scales are in the "
    "manifest and `edgert inspect`). Integer model inputs (token ids, masks) stay as they "
    "are.")]
AllowFloatOpt = Annotated[bool, typer.Option(
    "--allow-float", help="With --int-only: keep nodes that have no integer form in float32 "
    "(their inputs dequantized, their outputs requantized at calibrated scales) instead of "
    "failing; `edgert inspect` lists them.")]
WeightBitsOpt = Annotated[Optional[str], typer.Option(
    "--weight-bits", metavar="[1|2|3|4|ternary]", help="Low-bit weights: every MatMul/Gemm "
    "with a constant float weight (K x N >= 1024) becomes an edgert.LutMatMul on packed "
    "1-4-bit or ternary weights, computed by table lookup (T-MAC). With --int-only: int8 "
    "activations and the weight scale folded into the Requant. `edgert inspect` lists the "
    "nodes and the bytes saved.")]
GroupSizeOpt = Annotated[Optional[str], typer.Option(
    "--group-size", metavar="[32|64|128|K]", help="With --weight-bits: rows of K sharing "
    "one weight scale: 32, 64, 128 (default) or K (or 0: one group over all of K; the "
    "default and only choice with --int-only, except for ternary). A weight whose K is "
    "smaller than the group size gets one group.")]
ZeroPointOpt = Annotated[bool, typer.Option(
    "--weight-zero-point", help="With --weight-bits 1-4: asymmetric codes (min-max scale "
    "and a zero point per group and column) instead of symmetric ones. Float activations "
    "get a float zero point (the grid runs exactly from each group's min to its max: "
    "weights from a GGUF Q4_1 file with --group-size 32 stay exactly as they were); "
    "--int-only gets an integer one.")]
KeepFloatOpt = Annotated[Optional[list[str]], typer.Option(
    "--keep-float", metavar="PATTERN", help="With --weight-bits: MatMul/Gemm nodes whose "
    "node name or weight name matches this glob keep float32 weights (repeatable), e.g. "
    "an LLM's output head, where low-bit weights cost the most quality.")]
LutOpt = Annotated[Optional[Literal["auto", "always", "never"]], typer.Option(
    "--lut", help="With --weight-bits: how each low-bit matmul runs. auto (default): time "
    "table lookup against dequantize-then-multiply for each shape on this machine and keep "
    "the faster (cached in ~/.cache/edgert/kernel_choice.json; a target this machine "
    "cannot run gets table lookup); always: table lookup; never: dequantize. `edgert "
    "inspect` shows each node's kernel.")]
TuningDbOpt = Annotated[str, typer.Option(
    "--tuning-db", metavar="PATH|shipped|none", help="A tuning database written by "
    "`edgert tune` (its default: ~/.cache/edgert/tuning): kernels it holds faster "
    "schedules for, for this target and the same shapes, use them. shipped (default): "
    "the records that come with edgert for the target, if any; none: no records.")]

InputShapeOpt = Annotated[Optional[list[str]], typer.Option(
    "--input-shape", metavar="NAME=D1,D2,...", help="Fix the dims of an input the model "
    "leaves dynamic (repeatable), e.g. --input-shape x=1,3,320,320: the shape arithmetic "
    "that depends on them is folded at compile time. A dim given as ? keeps the model's "
    "(x=?,3,320,320: a dynamic batch stays dynamic), and so do inputs not named.")]
LMulOpt = Annotated[Optional[Literal["attention", "all"]], typer.Option(
    "--lmul", help="fp32 compiles: multiply by L-Mul, an integer addition of the operands' "
    "bit patterns (mantissas cut to --lmul-mantissa bits, products summed in float32). "
    "attention: the matmuls of two computed operands (Q·Kᵀ, scores·V); all: every MatMul "
    "and matrix-product Gemm. `edgert inspect` shows how many were replaced.")]
LMulMantissaOpt = Annotated[Optional[int], typer.Option(
    "--lmul-mantissa", metavar="[2|3|4|5]", help="With --lmul: operand mantissa bits "
    "(default 4: as precise as float8_e4m3 products; 3 beats float8_e5m2).")]
BinaryAttentionOpt = Annotated[bool, typer.Option(
    "--binary-attention", help="Attention (Q·Kᵀ, scale, mask, softmax, ·V) on binary codes "
    "of queries and keys, scores by xor and popcount; the hash is fitted on --calib DATA "
    "(post-training: expect an accuracy drop). With --int-only: integer codes (sign of an "
    "int8 projection) packed in words, popcount scores into Shiftmax (quadratic) or an "
    "integer division per output (linear). `edgert inspect` shows the attention replaced.")]
HashBitsOpt = Annotated[Optional[int], typer.Option(
    "--hash-bits", metavar="[8|16|32]", help="With --binary-attention: code bits per query "
    "and key (default 16).")]
AttentionFormOpt = Annotated[Optional[Literal["quadratic", "linear"]], typer.Option(
    "--attention-form", help="With --binary-attention: quadratic (softmax on the popcount "
    "scores, default) or linear (the kernel s + b + 1 by associativity: linear in the "
    "sequence length, no softmax).")]
ShiftLinearOpt = Annotated[Optional[str], typer.Option(
    "--shift-linear", metavar="mlp|all|PATTERN", help="With --int-only: round the chosen "
    "Linears' int8 weights to signed powers of two, so each product is a shift. mlp: the two "
    "Linears of each MLP block; all: every Linear; else a glob (or re:REGEX) on the fp32 "
    "node, weight, bias or output names. `edgert inspect` shows what was replaced.")]


@app.command("compile")
def compile_cmd(
    model: Annotated[Path, typer.Argument(help="The ONNX model to compile.")],
    target: TargetOpt = "host",
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Artifact to write "
                                                   "(default: MODEL with suffix .edgert).")] = None,
    threads: ThreadsOpt = None,
    int_only: IntOnlyOpt = False,
    calib: CalibOpt = None,
    calib_method: CalibMethodOpt = "minmax",
    act_bits: ActBitsOpt = "auto",
    io: IoOpt = "float",
    allow_float: AllowFloatOpt = False,
    weight_bits: WeightBitsOpt = None,
    group_size: GroupSizeOpt = None,
    weight_zero_point: ZeroPointOpt = False,
    keep_float: KeepFloatOpt = None,
    lut: LutOpt = None,
    tuning_db: TuningDbOpt = "shipped",
    input_shape: InputShapeOpt = None,
    lmul: LMulOpt = None,
    lmul_mantissa: LMulMantissaOpt = None,
    binary_attention: BinaryAttentionOpt = False,
    hash_bits: HashBitsOpt = None,
    attention_form: AttentionFormOpt = None,
    shift_linear: ShiftLinearOpt = None,
    no_cache: Annotated[bool, typer.Option(
        "--no-cache", help="Compile even if the compile cache holds this exact compile, and "
        "do not store it (also EDGERT_NO_COMPILE_CACHE=1; see docs/design.md).")] = False,
    verbose: Annotated[bool, typer.Option(
        "--verbose", "-v", help="Also print the build log: what TVM and the other libraries "
        "printed during each stage (kept in the artifact; `edgert inspect --build-log` "
        "shows it later).")] = False,
) -> None:
    """Compile an ONNX model into a .edgert artifact for a target.

    The model is checked (ONNX checker, shape inference, every operator supported: all
    unsupported ones are listed at once), optionally calibrated and rewritten into an
    integer-only graph (--int-only --calib DATA; --io int8 for integer inputs and outputs,
    --allow-float to keep ops without an integer form in float32), optionally given low-bit
    weights (--weight-bits, with or without --int-only), lowered with TVM and
    packaged into one file that `edgert run` and `edgert.Session` load. The file is written
    atomically. Each stage is shown with its time; library messages go to the build log.
    An identical earlier compile (same model, options, target and edgert) is reused from the
    compile cache (shown as "cached"; --no-cache to compile anyway).
    """
    from edgert.compiler.options import CompileOptions

    options = CompileOptions(
        target=target, threads=threads, int_only=int_only, calib=calib,
        calib_method=calib_method, act_bits=act_bits, io=io, allow_float=allow_float,
        weight_bits=weight_bits, group_size=group_size, weight_zero_point=weight_zero_point,
        keep_float=tuple(keep_float or ()), lut=lut, tuning_db=tuning_db,
        input_shapes=input_shape, lmul=lmul, lmul_mantissa=lmul_mantissa,
        binary_attention=binary_attention, hash_bits=hash_bits, attention_form=attention_form,
        shift_linear=shift_linear)
    output = output or model.with_suffix(".edgert")
    term = _terminal_console()
    try:
        path = _compile_with_progress(term, model, output, options,
                                      cache=False if no_cache else None)
    except EdgertError as e:
        if verbose and getattr(e, "build_log", None):
            term.print(Path(e.build_log).read_text(encoding="utf-8"), highlight=False,
                       markup=False, soft_wrap=True)
        raise
    if verbose:
        from edgert.artifact import read_artifact

        term.print(read_artifact(path).build_log or "", highlight=False, markup=False,
                   soft_wrap=True, end="")
    out.print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")


def _terminal_console(fd: int = 2) -> Console:
    """A console on the terminal's stderr (``fd`` 2) or stdout (1) that keeps working while
    the compiler captures the process's stdout and stderr into the build log."""
    from edgert.capture import terminal_stream

    return Console(file=terminal_stream(fd))


def _compile_with_progress(term: Console, model: Path, output: Path, options: Any,
                           cache: bool | None = None) -> Path:
    """Run the compile showing the current step (on stderr), each finished stage with its
    time (on stdout, so that a failure stays one line on stderr) and the calibration samples
    done."""
    from edgert.compiler.pipeline import compile_model

    stages = _terminal_console(1)

    with term.status("compiling") as status:
        def progress(done: int, total: int) -> None:
            if not total:
                status.update(f"calibrating: {done} samples")
                return
            filled = 20 * done // total
            status.update(f"calibrating [{'#' * filled}{'.' * (20 - filled)}] "
                          f"{done}/{total} samples")

        def stage_done(name: str, seconds: float) -> None:
            stages.print(f"  {name:<10} {seconds:7.2f} s", highlight=False)

        return compile_model(model, output, options, on_stage=lambda s: status.update(s),
                             on_progress=progress, on_stage_done=stage_done, cache=cache)


@app.command()
def tune(
    model: Annotated[Path, typer.Argument(help="The ONNX model whose kernels to tune.")],
    target: TargetOpt = "host",
    trials: Annotated[int, typer.Option("--trials", min=1, help="Schedules measured per "
                                        "kernel (kernels already tuned with as many are "
                                        "skipped, others continue).")] = 64,
    budget_minutes: Annotated[Optional[float], typer.Option(
        "--budget-minutes", min=0, help="Stop after this many minutes (records are kept; "
        "rerun to continue).")] = None,
    tuning_db: Annotated[Optional[Path], typer.Option(
        "--tuning-db", help="Tuning database folder (default: $EDGERT_CACHE/tuning or "
        "~/.cache/edgert/tuning); records go to DB/TARGET/.")] = None,
    top: Annotated[int, typer.Option("--top", min=1, help="Tune at most this many kernels, "
                                     "largest FLOPs first.")] = 10,
    threads: ThreadsOpt = None,
    search: Annotated[Literal["evolutionary", "random"], typer.Option(
        "--search", help="evolutionary: search around the best schedules measured so far; "
        "random: independent random schedules (cheaper per trial).")] = "evolutionary",
    rpc: Annotated[Optional[str], typer.Option(
        "--rpc", metavar="HOST:PORT", help="Measure on a board through its TVM RPC server "
        "(`python -m tvm.exec.rpc_server --host 0.0.0.0 --port 9091` there), with --target "
        "set to the board's (e.g. rpi5): candidates are cross-compiled here.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Search faster schedules for a model's hot kernels, measured on this machine (or on a
    board, with --rpc).

    The model is lowered as `edgert compile` lowers it; its static-shape kernels with the
    most FLOPs (fused matmuls, convolutions...) are tuned with TVM MetaSchedule and the best
    schedules are stored in a tuning database, per target and kernel shape. `edgert compile
    --tuning-db DB` then uses those that beat the default schedule. Interrupted or budget-cut
    runs keep their records and continue when run again.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from edgert.compiler.tune import tune_model

    bars: dict[str, int] = {}
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[best]}"), TimeElapsedColumn(), console=err,
                  transient=as_json) as progress:
        stage_task = progress.add_task("starting", total=None, best="")

        def on_stage(label: str) -> None:
            progress.update(stage_task, description=label)

        def on_progress(kernel: str, done: int, total: int, best_ms: float | None) -> None:
            if kernel not in bars:
                bars[kernel] = progress.add_task(kernel, total=total, best="")
            progress.update(bars[kernel], completed=done, total=total,
                            best="" if best_ms is None else f"best {best_ms:.4f} ms")

        report = tune_model(model, target=target, trials=trials, budget_minutes=budget_minutes,
                            db=tuning_db, top=top, threads=threads, search=search, rpc=rpc,
                            on_stage=on_stage, on_progress=on_progress)
        progress.update(stage_task, description="done", total=1, completed=1)
    if as_json:
        out.print_json(json.dumps(report.to_json()))
    else:
        _print_tune_report(report, model, target, tuning_db, budget_minutes)


def _print_tune_report(report: Any, model: Path, target: str, tuning_db: Optional[Path],
                       budget_minutes: Optional[float]) -> None:
    """The table of tuned kernels and where the records went."""
    table = Table("kernel", "shapes", "MFLOP", "calls", "trials", "default ms", "tuned ms",
                  "speedup", "status")
    for k in report.kernels:
        if k.status.startswith("skipped"):
            continue
        ms = lambda v: "-" if v is None else f"{v:.4g}"   # noqa: E731
        table.add_row(k.name, k.signature, f"{k.flops / 1e6:.2f}", str(k.calls), str(k.trials),
                      ms(k.default_ms), ms(k.tuned_ms),
                      "-" if k.speedup is None else f"{k.speedup:.2f}x", k.status)
    out.print(table)
    skipped = [k for k in report.kernels if k.status.startswith("skipped")]
    if skipped:
        out.print(f"{len(skipped)} smaller kernel(s) not tuned (see --top)", highlight=False)
    if report.budget_hit:
        done = [k.name for k in report.kernels if k.status in ("tuned", "cached")]
        out.print(f"time budget of {budget_minutes:g} min used up after {report.seconds:.0f} s: "
                  f"{len(done)} kernel(s) fully tuned ({', '.join(done) or 'none'}); the "
                  f"records are kept: run the same command again to continue", highlight=False)
    db_root = tuning_db if tuning_db is not None else Path(report.db_dir).parent
    out.print(f"measured on: {report.measured_on}", highlight=False)
    out.print(f"records in {report.db_dir}; use them with: edgert compile {model} "
              f"--target {target} --tuning-db {db_root}", highlight=False)


@app.command()
def run(
    artifact: Annotated[Path, typer.Argument(help="A .edgert artifact.")],
    inputs: Annotated[list[str], typer.Option("--input", "-i", help="NAME=file.npy for one input, "
                                              "or one .npz file holding every input by name.")],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Save all outputs to "
                                                   "this .npz file.")] = None,
    backend: Annotated[Literal[BACKENDS], typer.Option(help="Execution backend: tvm runs the "
                                                       "compiled library, numba the graph.")] = "tvm",
    threads: ThreadsOpt = None,
    rpc: Annotated[Optional[str], typer.Option(
        "--rpc", metavar="HOST:PORT", help="Run on a remote board through its TVM RPC server "
        "(`python -m tvm.exec.rpc_server --host 0.0.0.0 --port 9091` there); the artifact must "
        "be compiled for that board, e.g. --target rpi5.")] = None,
    check_finite: Annotated[bool, typer.Option(
        "--check-finite/--no-check-finite", help="Refuse float inputs holding NaN or inf "
        "(default), naming the first; --no-check-finite runs them (docs/reliability.md).")] = True,
) -> None:
    """Run an artifact on inputs from .npy/.npz files and summarize the outputs."""
    from edgert.session import Session

    sess = Session(artifact, backend=backend, threads=threads, rpc=rpc,
                   check_finite=check_finite)
    feed = load_inputs(inputs)
    names = [o.name for o in sess.get_outputs()]
    results = sess.run(None, feed)
    table = Table("output", "shape", "dtype", "min", "max", "mean")
    for name, value in zip(names, results):
        stats = [f"{value.min():.6g}", f"{value.max():.6g}", f"{value.mean():.6g}"] if value.size else ["-"] * 3
        table.add_row(name, str(list(value.shape)), str(value.dtype), *stats)
    out.print(table)
    if output:
        save_npz(output, dict(zip(names, results)))
        out.print(f"wrote {output}")


@app.command()
def inspect(
    path: Annotated[Path, typer.Argument(help="An .onnx model or a .edgert artifact.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    build_log: Annotated[bool, typer.Option(
        "--build-log", help="Print the artifact's build log (stage times and what the "
        "libraries printed during the compile) instead.")] = False,
) -> None:
    """Show a model's ops (counts, dtypes), inputs, outputs, target, versions, float-op count,
    the low-bit (LutMatMul) nodes with the bytes they save, the L-Mul matmuls, the binary
    attention and the shift linears."""
    from edgert.model_info import inspect_path

    if build_log:
        _print_build_log(path)
        return

    info = inspect_path(path)
    if as_json:
        out.print_json(json.dumps(info))
        return
    out.print(f"[bold]{info['path']}[/bold] ({info['kind']})")
    if info["kind"] == "edgert":
        out.print(f"target {info['target']}, edgert {info['edgert_version']}, TVM {info['tvm_version']}, "
                  f"format {info['format_version']}")
    out.print(f"opsets {info['opsets']}; {info['nodes']} nodes; {info['parameters']} parameters "
              f"({info['parameter_bytes'] / 1024:.1f} KiB)")
    untyped = f"; {info['untyped_tensors']} tensors of unknown type" if info["untyped_tensors"] else ""
    out.print(f"float ops inside the graph: {info['float_ops']} (boundary quantize/dequantize: "
              f"{info['boundary_ops']}{untyped})")
    floats = info["float_nodes"]
    if floats and info["float_ops"] < info["nodes"]:          # a partly integer graph
        shown = ", ".join(f"{n['name']} ({n['op_type']})" for n in floats[:FLOAT_NODES_SHOWN])
        more = f", ... ({len(floats) - FLOAT_NODES_SHOWN} more)" if len(floats) > FLOAT_NODES_SHOWN else ""
        out.print(f"float nodes: {shown}{more}; float conversions (Quantize/DequantizeLinear "
                  f"inside): {info['float_conversions']}", highlight=False)
    q = info.get("quantization") or {}
    if q:
        out.print(f"integer-only: act-bits {q['act_bits']}, calibration {q['calib_method']}, "
                  f"activation dtypes {q['activation_dtypes']}")
    lowbit = info.get("lowbit")
    if lowbit:
        _print_lowbit(lowbit)
    lmul = info.get("lmul")
    if lmul:
        out.print(f"L-Mul matmuls (--lmul {lmul['mode']}, {lmul['mantissa_bits']}-bit "
                  f"mantissas): {len(lmul['replaced'])} of {lmul['matmuls']} MatMul/Gemm "
                  f"replaced" + (f"; kept: {', '.join(lmul['kept'])}" if lmul["kept"] else ""),
                  highlight=False)
    battn = info.get("binary_attention")
    if battn:
        kind = ", integer" if battn.get("integer") else ""
        out.print(f"binary attention ({battn['bits']}-bit codes, {battn['form']} form{kind}): "
                  f"{len(battn['replaced'])} of {battn['softmaxes']} softmaxes replaced"
                  + (f"; kept: {', '.join(battn['kept'])}" if battn["kept"] else ""),
                  highlight=False)
    if info.get("shift_linear"):
        from edgert.compiler.shift_linear import summary
        out.print(summary(info["shift_linear"]), highlight=False)
    scales = q.get("io")
    if scales:
        out.print("integer I/O (--io int8): input q = saturate(round_half_even(x / scale)), "
                  "output x = q * scale")
    ranged = any("range" in v for v in info["inputs"])
    io = Table("", "name", "shape", "dtype", *(["scale"] if scales else []),
               *(["valid values"] if ranged else []))
    for kind in ("inputs", "outputs"):
        for v in info[kind]:
            extra = [_scale_text((scales or {}).get(kind, {}).get(v["name"]))] if scales else []
            if ranged:
                r = v.get("range")
                extra.append(f"[{r['min']}, {r['max']}] ({r['why']})" if r else "-")
            io.add_row(kind[:-1], v["name"], str(v["shape"]), v["dtype"], *extra)
    out.print(io)
    ops = Table("op", "count", "dtypes")
    for op, d in info["ops"].items():
        ops.add_row(op, str(d["count"]), ", ".join(d["dtypes"]))
    out.print(ops)


@app.command()
def targets(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List the known compilation targets and whether this machine can run each."""
    from edgert.targets import can_run_here, list_targets, resolve_host

    rows = []
    for t in list_targets():
        ok, why = can_run_here(t)
        rows.append({**t.to_json(), "runs_here": ok, "why_not": why})
    if as_json:
        out.print_json(json.dumps({"host": resolve_host().name, "targets": rows}))
        return
    table = Table("target", "description", "device", "vector ISA", "runs here")
    for r in rows:
        table.add_row(r["name"], r["description"], r["device"] + (f" {r['cuda_arch']}" if r["cuda_arch"] else ""),
                      r["vector_isa"], "yes" if r["runs_here"] else f"no: {r['why_not']}")
    out.print(table)
    out.print(f"host = {resolve_host().name}")


@app.command()
def demo(
    threads: ThreadsOpt = None,
    repeats: Annotated[int, typer.Option(min=1, help="Batch-1 latency samples per runtime.")] = 200,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Compile the built-in tiny ViT (scikit-learn digits) for this machine and compare with onnxruntime."""
    from edgert.demo import run_demo

    with _terminal_console().status("compiling the demo model") as status:
        result = run_demo(threads=threads, repeats=repeats, on_stage=lambda s: status.update(s))
    if as_json:
        out.print_json(json.dumps(result))
        return
    out.print(f"tiny ViT on scikit-learn digits: {result['test_images']} held-out 8x8 images, "
              f"compiled for {result['target']} in {result['compile_s']:.1f} s")
    table = Table("runtime", "accuracy", "p50 latency, batch 1", "p90")
    for name in ("onnxruntime", "edgert"):
        lat = result["latency_batch1"][name]
        table.add_row(name, f"{100 * result['accuracy'][name]:.2f}%", f"{lat['p50_ms']:.3f} ms",
                      f"{lat['p90_ms']:.3f} ms")
    out.print(table)
    ratio = result["latency_batch1"]["edgert"]["p50_ms"] / result["latency_batch1"]["onnxruntime"]["p50_ms"]
    out.print(f"edgert/onnxruntime latency ratio {ratio:.2f}; predictions agree on "
              f"{100 * result['agreement']:.1f}%; max |logit difference| {result['max_abs_logit_diff']:.2e}")


def _print_build_log(path: Path) -> None:
    """An artifact's build log on stdout (an InputError for files without one)."""
    from edgert.artifact import read_artifact

    if path.suffix == ".onnx":
        raise InputError(f"{path}: an ONNX model has no build log; give a .edgert artifact")
    text = read_artifact(path).build_log
    if text is None:
        raise InputError(f"{path}: this artifact has no build log (compiled by an edgert "
                         "that did not keep one)")
    out.print(text, highlight=False, markup=False, soft_wrap=True, end="")


FLOAT_NODES_SHOWN = 10
LOWBIT_SKIPPED_SHOWN = 10


def _print_lowbit(lowbit: dict) -> None:
    """The manifest's ``lowbit`` section: converted nodes (a table), skipped ones, bytes saved."""
    nodes, skipped = lowbit.get("nodes", {}), lowbit.get("skipped", {})
    bits = lowbit.get("weight_bits")
    out.print(f"low-bit weights ({lowbit.get('variant')} LutMatMul): {bits}"
              f"{'' if bits == 'ternary' else '-bit'} {lowbit.get('scheme')}, group size "
              f"{lowbit.get('group_size')}: {len(nodes)} node(s) converted, "
              f"{lowbit.get('bytes_saved', 0) / 1024:.1f} KiB saved"
              + (f", --lut {lowbit['lut']}" if "lut" in lowbit else ""), highlight=False)
    if nodes:
        table = Table("node", "bits", "K x N", "group", "fp32 bytes", "packed bytes",
                      "LutMatMul node", "kernel", "lut / dequant ms")
        for name, e in nodes.items():
            table.add_row(name, str(e["bits"]), f"{e['K']} x {e['N']}", str(e["group_size"]),
                          str(e["bytes_fp32"]), str(e["bytes_packed"]), e.get("lut_node", "-"),
                          *_kernel_text(e))
        out.print(table)
    if skipped:
        shown = "; ".join(f"{n}: {why}" for n, why in list(skipped.items())[:LOWBIT_SKIPPED_SHOWN])
        more = (f"; ... ({len(skipped) - LOWBIT_SKIPPED_SHOWN} more)"
                if len(skipped) > LOWBIT_SKIPPED_SHOWN else "")
        out.print(f"not converted: {shown}{more}", highlight=False)


def _kernel_text(entry: dict) -> tuple[str, str]:
    """(``lut``/``dequant`` and how it was chosen, the two kernels' times if timed)."""
    kernel, choice = entry.get("kernel", "lut"), entry.get("kernel_choice", {})
    how = choice.get("how")
    times = (f"{choice['lut_ms']:.3f} / {choice['dequant_ms']:.3f} ({choice.get('rows')} rows)"
             if "lut_ms" in choice else "-")
    return (f"{kernel} ({how})" if how else kernel), times


def _scale_text(spec: dict | None) -> str:
    """An integer-I/O scale for the inspect table: one value, or a per-channel summary."""
    if not spec:
        return "-"
    scale = spec["scale"]
    if isinstance(scale, list):
        return (f"per channel, axis {spec['axis']}: {len(scale)} values in "
                f"[{min(scale):.6g}, {max(scale):.6g}]")
    return f"{scale:.6g}"


app.command("profile")(make_profile_cli(out, _terminal_console))
app.command("bundle")(make_bundle_cli(out, _terminal_console))


def main() -> None:
    """Entry point: run the app; edgert errors become one line and their exit code, SIGINT /
    SIGTERM 130 / 143 after a clean unwind (:func:`edgert.interrupts.run_app`)."""
    from edgert.interrupts import run_app

    run_app(app, err)
