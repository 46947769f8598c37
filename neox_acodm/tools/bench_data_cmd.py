"""The ``neox-acodm bench-data`` subcommand: flags, the run and its table (see :mod:`.bench_data`)."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from .args import UsageError, existing_dir, new_file, out_dir, positive_float, positive_int

__all__ = ["register"]


def _fraction(text: str) -> float:
    v = positive_float(text)
    if v > 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return v


def run(args: argparse.Namespace) -> dict:
    from . import bench_data as bd

    domains = bd.pile_domains(args.scale, args.bytes_per_token)
    weights = [d.weight for d in domains]
    n = round(bd.run_length_samples(args.iters, args.global_batch) * args.scale)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="acodm-bench-data-"))
    try:
        prefixes = bd.write_synthetic(work / "data", domains)
        stock_n = bd.stock_nums(weights, n)
        if args.neox_dir:
            stock = bd.build_neox(args.neox_dir, prefixes, stock_n, args.seq_len, args.seed, "stock", weights)
            ours = bd.build_neox(args.neox_dir, prefixes, [1] * len(prefixes), args.seq_len, args.seed, "acodm")
        else:
            stock = bd.build_megatron(prefixes, weights, n, args.seq_len, args.seed, work / "stock", blended=True)
            ours = bd.build_megatron(prefixes, weights, n, args.seq_len, args.seed, work / "acodm", blended=False)
        cursors = bd.measure_cursors(ours["samples"], weights, args.global_batch, args.micro_batch, args.steps)
        replaced = bd.stock_nums([1.0], n)[0]  # the replaced sizing: N x max_weight (1.0) x 1.005 per domain
        return {
            "schema": "neox_acodm.bench-data/1",
            "backend": "gpt-neox" if args.neox_dir else "megatron-core",
            "scale": args.scale,
            "bytes_per_token": args.bytes_per_token,
            "run": {"iters": args.iters, "global_batch": args.global_batch, "seq_len": args.seq_len, "samples": n},
            "domains": [d.__dict__ for d in domains],
            "stock": stock,
            "acodm": ours,
            "index_ratio": ours["index_bytes"] / max(1, stock["index_bytes"]),
            "cursors": cursors,
            "permutation_of_largest_domain": bd.measure_permutation(replaced) if args.compare_permutation else None,
        }
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


def _table(rep: dict) -> str:
    s, o, c = rep["stock"], rep["acodm"], rep["cursors"]

    def size(b: float) -> str:
        return f"{b / 2**30:.2f} GiB" if b >= 2**30 else f"{b / 2**20:.2f} MiB"

    lines = [
        f"bench-data ({rep['backend']}): Pile-22 x {rep['scale']:g}, {rep['run']['samples']:,} samples of "
        f"{rep['run']['seq_len']} tokens ({rep['run']['iters']:,} iterations x {rep['run']['global_batch']})",
        "| build | samples indexed | index bytes | build s |",
        "|---|---|---|---|",
        f"| stock blended | {sum(s['samples']):,} | {size(s['index_bytes'])} | {s['seconds']:.1f} |",
        f"| acodm (one epoch per domain) | {sum(o['samples']):,} | {size(o['index_bytes'])} | {o['seconds']:.1f} |",
        f"index bytes acodm / stock: {rep['index_ratio']:.3f}",
    ]
    if "blend_bytes_per_rank" in s:
        lines.append(f"stock blend index in memory on every rank: {size(s['blend_bytes_per_rank'])} (acodm: 0)")
    lines.append(
        f"cursors: peak {size(c['peak_traced_bytes'])} traced; step {1e3 * c['median_step_seconds']:.2f} ms median, "
        f"{1e3 * c['max_step_seconds']:.2f} ms slowest ({c['steps']} steps of {c['slots']} micro-batches from "
        f"half a batch before every domain's epoch boundary)"
    )
    p = rep.get("permutation_of_largest_domain")
    if p:
        lines.append(
            f"replaced order: one materialised permutation per domain of a dataset sized for the run "
            f"(N x max_weight 1.0 x 1.005 = {p['size']:,} samples): {size(p['bytes'])}, {p['seconds']:.1f} s each"
        )
    return "\n".join(lines) + "\n"


def main(args: argparse.Namespace) -> int:
    if args.neox_dir:
        neox = existing_dir(args.neox_dir, "--neox-dir")
        if not (neox / "megatron" / "data" / "gpt2_dataset.py").is_file():
            raise UsageError(f"--neox-dir {args.neox_dir}: no megatron/data/gpt2_dataset.py; give a GPT-NeoX checkout")
    else:
        import importlib.util

        if importlib.util.find_spec("megatron.core") is None:
            raise UsageError("bench-data needs megatron-core (pip install 'neox_acodm[megatron]') or --neox-dir")
    if args.micro_batch > args.global_batch or args.global_batch % args.micro_batch:
        raise UsageError(f"--micro-batch {args.micro_batch} must divide --global-batch {args.global_batch}")
    if args.json:
        new_file(args.json, "--json")
    if args.workdir:
        out_dir(args.workdir, "--workdir")
    rep = run(args)
    sys.stdout.write(_table(rep))
    if args.json:
        Path(args.json).write_text(json.dumps(rep, indent=1) + "\n")
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "bench-data",
        help="index bytes, build time and cursor memory at the Pile's scale (stock blend vs acodm)",
        description="Example: neox-acodm bench-data --scale 0.01   (Pythia-410M's run on Pile-22, 1 %% scale)",
    )
    p.add_argument("--scale", type=_fraction, default=1.0, help="fraction of the Pile and of the run (default 1)")
    p.add_argument("--iters", type=positive_int, default=143_000, help="train iterations (Pythia: 143000)")
    p.add_argument("--global-batch", type=positive_int, default=1024, help="samples per iteration")
    p.add_argument("--micro-batch", type=positive_int, default=32, help="samples per micro-batch")
    p.add_argument("--seq-len", type=positive_int, default=2048)
    p.add_argument("--seed", type=positive_int, default=1234)
    p.add_argument("--bytes-per-token", type=positive_float, default=3.0, help="UTF-8 bytes per token")
    p.add_argument("--steps", type=positive_int, default=200, help="steps timed on the cursors")
    p.add_argument("--neox-dir", default=None, help="a GPT-NeoX checkout: measure NeoX's builder")
    p.add_argument(
        "--compare-permutation",
        action="store_true",
        help="also time the replaced order (a permutation per domain sized for the run)",
    )
    p.add_argument("--workdir", default=None, help="keep the files here (default: a temporary folder, removed)")
    p.add_argument("--json", default=None, help="also write the report as JSON to this file")
    p.set_defaults(func=main)
