"""``neox-acodm report RUN_DIR``: plots and one self-contained HTML page of a run.

Reads the ``acodm/*`` TensorBoard scalars a GPT-NeoX or Megatron-LM run writes (a run in
progress too: what is flushed so far), or a bench-mix/demo report directory.
"""

from .events import RunScalars, read_run
from .page import write_report

__all__ = ["RunScalars", "read_run", "register", "write_report"]


def _cmd(args) -> int:
    import logging

    from ..args import out_dir

    page = write_report(args.run_dir, out_dir(args.out) if args.out else None)
    logging.getLogger(__name__).info("report: %s", page)
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "report",
        help="plots + one self-contained HTML page of a run's acodm/* metrics",
        description="Reads the acodm/* TensorBoard scalars below RUN_DIR (a GPT-NeoX or Megatron-LM "
        "tensorboard_dir, a run in progress too) or a bench-mix/demo output directory. "
        "Example: neox-acodm report tensorboard/my_run --out my_run_report",
    )
    p.add_argument("run_dir", help="TensorBoard directory of the run, or a bench-mix/demo output directory")
    p.add_argument("--out", default=None, help="output directory (default RUN_DIR/acodm_report)")
    p.set_defaults(func=_cmd)
