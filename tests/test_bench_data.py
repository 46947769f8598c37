"""``neox-acodm bench-data``: the Pile-shaped data layer against the stock blended loader, at a
small scale (the committed full-scale figures are in docs/performance.md)."""

import json
import os

import numpy as np
import pytest

from neox_acodm.tools.bench_data import pile_domains, write_synthetic
from neox_acodm.tools.cli import main


def test_synthetic_files_read_back_with_the_pile_counts(tmp_path):
    pytest.importorskip("megatron.core")
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    domains = pile_domains(scale=1e-5)
    assert len(domains) == 22 and abs(sum(d.weight for d in domains) - 1) < 1e-3
    prefixes = write_synthetic(tmp_path, domains)
    for d, prefix in zip(domains, prefixes):
        ds = IndexedDataset(prefix)
        assert len(ds) == d.docs and int(ds.sequence_lengths.sum()) == d.tokens
        assert os.path.getsize(prefix + ".bin") == 2 * d.tokens


def _run(tmp_path, *extra):
    out = tmp_path / f"rep{len(list(tmp_path.iterdir()))}.json"
    args = ["bench-data", "--scale", "0.00005", "--steps", "20", "--json", str(out), *extra]
    assert main(args) == 0
    import torch.distributed as dist

    assert not dist.is_initialized(), "bench-data left its process group behind"
    return json.loads(out.read_text())


def test_index_does_not_grow_with_the_run_and_stays_within_stock(tmp_path):
    pytest.importorskip("megatron.core")
    short = _run(tmp_path, "--iters", "143000")
    long_ = _run(tmp_path, "--iters", "572000")  # 4x the run
    # the plugin's index is one epoch per domain: the same whatever the run length
    assert short["acodm"]["samples"] == long_["acodm"]["samples"]
    assert short["acodm"]["index_bytes"] == long_["acodm"]["index_bytes"]
    # the stock blend grows with the run; at Pythia's run length the plugin stays within 1.2x of it
    assert long_["stock"]["index_bytes"] > 2 * short["stock"]["index_bytes"]
    assert short["index_ratio"] <= 1.2
    tokens = np.array([d["tokens"] for d in short["domains"]])
    assert np.all(np.array(short["acodm"]["samples"]) == (tokens - 1) // 2048)
    assert short["cursors"]["peak_traced_bytes"] < 64 * 2**20


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--scale", "2"], "--scale: must be in (0, 1]"),
        (["--micro-batch", "3"], "--micro-batch 3 must divide --global-batch 1024"),
        (["--neox-dir", "/nonexistent/neox"], "--neox-dir /nonexistent/neox: no such directory"),
    ],
)
def test_bad_flags_exit_2_with_one_line(argv, message, capsys):
    try:
        code = main(["bench-data", *argv])
    except SystemExit as e:  # argparse's own checks exit from the parser
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


@pytest.mark.neox
@pytest.mark.skipif(not os.environ.get("NEOX_DIR"), reason="set NEOX_DIR to a GPT-NeoX checkout")
def test_neox_builder_on_the_same_files(tmp_path):
    pytest.importorskip("requests")  # NeoX's own requirements
    rep = _run(tmp_path, "--neox-dir", os.environ["NEOX_DIR"])
    assert rep["backend"] == "gpt-neox" and rep["index_ratio"] <= 1.2
    assert rep["stock"]["blend_bytes_per_rank"] == 9 * sum(rep["stock"]["samples"])
