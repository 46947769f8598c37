"""The ``neox-acodm bench-reward`` subcommand: its flags (checked before anything runs), the
table it prints, and the measurements of :mod:`.bench_reward`."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys

import torch

from neox_acodm import ops

from .args import UsageError, positive_int
from .bench_reward import DTYPES, run
from .model import PYTHIA, pythia_shape

__all__ = ["register"]


def _print_table(rep: dict) -> None:
    out = sys.stdout
    out.write(f"copy bandwidth {rep['copy_gbps']:.1f} GB/s, fp32 matmul {rep['matmul_gflops']:.1f} GFLOP/s\n")
    out.write(
        f"{'op':<12}{'backend':<8}{'dev':<5}{'D':>4}{'P':>11}{'k':>7}{'dtype':>10}"
        f"{'ms':>10}{'GB/s':>8}{'GFLOP/s':>9}{'%copy':>7}{'%mm':>6}\n"
    )
    for r in rep["results"]:
        out.write(
            f"{r['op']:<12}{r['backend']:<8}{r['device']:<5}{r['D']:>4}{r['P']:>11}"
            f"{r['k'] or '':>7}{r['dtype']:>10}{r['ms']:>10.3f}{r['gbps']:>8.1f}{r['gflops']:>9.1f}"
            f"{100 * r['gbps'] / rep['copy_gbps']:>7.0f}{100 * r['gflops'] / rep['matmul_gflops']:>6.0f}\n"
        )
    out.write("\nreward buffer footprint (3 MLP out-projections, paper selection):\n")
    for f in rep["footprint"]:
        out.write(
            f"  {f['model']:<14} P={f['P'] / 1e6:6.1f}M  dense {f['dense_bytes'] / 2**30:6.2f} GiB"
            f"  sketch {f['sketch_bytes'] / 2**20:6.2f} MiB\n"
        )
    if "step" in rep:
        s = rep["step"]
        out.write(
            f"\ntrain step {s['model']} (b={s['batch']}, T={s['seq']}): {s['step_ms']:.1f} ms/micro-step; "
            f"reward path per step (G={s['grad_accum']}): dense {s['reward_dense_ms']:.1f} ms "
            f"({100 * s['reward_to_step_dense']:.2f}%), sketch {s['reward_sketch_ms']:.1f} ms "
            f"({100 * s['reward_to_step_sketch']:.2f}%)\n"
        )
        for est in ("exact", "projected"):
            a = s.get(f"activations_{est}")
            if a:
                out.write(
                    f"mixed micro-batches, activation capture ({est}): {a['per_step_ms']:.1f} ms per step "
                    f"({100 * a['to_step']:.2f}%), buffer {a['buffer_bytes'] / 2**20:.2f} MiB\n"
                )


def _sketch_width(text: str) -> int:
    v = positive_int(text)
    if v % 8:
        raise argparse.ArgumentTypeError(f"must be a positive multiple of 8, got {v}")
    return v


def _step_model(text: str) -> str:
    try:
        layers, hidden = pythia_shape(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if layers < 1 or hidden < 64 or hidden % 64:
        raise argparse.ArgumentTypeError(f"{text!r}: LAYERSxHIDDEN needs layers >= 1 and hidden a multiple of 64")
    return text


def _total_memory() -> int | None:
    import os

    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _check_device(name: str) -> None:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name}: not a torch device (cpu, cuda, cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: torch sees no GPU on this machine")
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {name}: bench-reward runs on cpu or cuda")


def main(args: argparse.Namespace) -> int:
    _check_device(args.device)
    if args.backend == "ext" and ops.load_extension() is None:
        raise UsageError(
            "--backend ext: the extension neox_acodm._C is not built; reinstall without "
            "NEOX_ACODM_SKIP_EXT=1 or use --backend torch"
        )
    need = args.D * max(args.P) * 4
    total = _total_memory()
    if total and need > total // 2:
        raise UsageError(
            f"--D {args.D} x --P {max(args.P)}: the dense buffer needs {need / 2**30:.1f} GiB, more "
            f"than half of this machine's {total / 2**30:.1f} GiB; lower --P or --D"
        )
    if args.step_model and importlib.util.find_spec("transformers") is None:
        raise UsageError("--step-model needs transformers: pip install 'neox_acodm[demo]'")
    rep = run(args)
    if args.json:
        sys.stdout.write(json.dumps(rep) + "\n")
    else:
        _print_table(rep)
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "bench-reward",
        help="time the reward kernels (torch vs extension)",
        description="Example: neox-acodm bench-reward --D 22 --P 4194304 --device cuda --step-model 410m",
    )
    p.add_argument("--D", type=positive_int, default=22, help="domains")
    p.add_argument("--P", type=positive_int, nargs="+", default=[4_194_304], help="selected elements (several allowed)")
    p.add_argument("--k", type=_sketch_width, default=16384, help="count-sketch width (a multiple of 8)")
    p.add_argument("--rank", type=positive_int, default=64, help="r of the Kronecker-projected activation capture")
    p.add_argument("--dtype", choices=list(DTYPES), default="float32", help="gradient dtype")
    p.add_argument("--device", default="cpu")
    p.add_argument("--backend", choices=["torch", "ext", "both"], default="both")
    p.add_argument("--repeats", type=positive_int, default=5)
    p.add_argument(
        "--step-model", type=_step_model, default=None, help=f"also time a training step: {list(PYTHIA)} or LxH"
    )
    p.add_argument("--step-batch", type=positive_int, default=1)
    p.add_argument("--step-seq", type=positive_int, default=256)
    p.add_argument("--step-repeats", type=positive_int, default=3)
    p.add_argument(
        "--step-autocast",
        choices=[d for d in DTYPES if d != "float32"],
        default=None,
        help="run the timed step under autocast to this dtype",
    )
    p.add_argument("--grad-accum", type=positive_int, default=8, help="micro-batches per step for the ratio")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.set_defaults(func=main)
