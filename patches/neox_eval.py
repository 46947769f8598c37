"""Per-domain validation for GPT-NeoX (part of the ``neox_training`` seam).

* ``megatron.training.evaluate_and_print_results``: after NeoX's blended validation, the
  per-domain validation perplexity through NeoX's own ``evaluate``, when ``valid_data_paths``
  match the domains one-to-one; logged as ``acodm/val_ppl/<domain>`` and ``/avg`` through the
  session's metrics sink (the same owner and writer as every other ``acodm/*`` scalar).
* ``megatron.training.forward_step``: on the pipe path, ``PipelineEngine.eval_batch`` returns a
  bare loss with PyPI DeepSpeed and a pair with DeeperSpeed; ``evaluate`` gets a pair from both.
"""

import logging
import os

logger = logging.getLogger("neox_acodm.patches.neox_eval")

#: the evaluate_and_print_results arguments the per-domain evaluation binds by name
EVAL_PARAMS = (
    "neox_args",
    "prefix",
    "forward_step_func",
    "data_iterator",
    "model",
    "iteration",
    "verbose",
    "timers",
    "chart_name",
    "reference_model",
)
#: the forward_step arguments the eval-shape wrapper reads (positions 2 and 4)
FORWARD_PARAMS = ("data_iterator", "model", "neox_args", "timers", "return_logits")


class DomainEvaluation:
    """Per-domain validation of one ``pretrain`` call; ``datasets`` are set by the loader patch."""

    def __init__(self, integ):
        self.integ = integ
        cfg, neox_args = integ.cfg, integ.neox_args
        self.datasets = None
        valid_paths = list(getattr(neox_args, "valid_data_paths", None) or [])
        # per-domain validation needs one valid path per domain, in domain order
        self.enabled = len(valid_paths) == cfg.num_domains and all(
            d.valid_path is None or os.path.normpath(d.valid_path) == os.path.normpath(p)
            for d, p in zip(cfg.domains, valid_paths)
        )
        if valid_paths and not self.enabled:
            logger.warning(
                "acodm: valid_data_paths do not match acodm.domains one-to-one; per-domain validation perplexity is off"
            )

    def wrap(self, original):
        import inspect

        ev = self
        sig = inspect.signature(original)

        def evaluate_and_print_results(*args, **kwargs):
            out = original(*args, **kwargs)
            a = sig.bind(*args, **kwargs)
            a.apply_defaults()
            a = a.arguments
            if a["chart_name"] == "validation" and ev.enabled and a["neox_args"].eval_iters > 0:
                ev.evaluate(
                    a["neox_args"],
                    a["forward_step_func"],
                    a["model"],
                    a["iteration"],
                    a["timers"],
                    a["reference_model"],
                )
            return out

        return evaluate_and_print_results

    def evaluate(self, neox_args, forward_step_func, model, iteration, timers, reference_model) -> None:
        """Per-domain validation perplexity with NeoX's own ``evaluate`` (every rank calls it),
        on fixed windows of each domain's validation dataset."""
        import megatron.training as training
        import numpy as np
        from megatron import mpu, print_rank_0
        from torch.utils.data import default_collate

        mb = neox_args.train_micro_batch_size_per_gpu
        dp, r = mpu.get_data_parallel_world_size(), mpu.get_data_parallel_rank()

        def windows(ds):
            b = 0
            while True:
                idx = ((b * dp + r) * mb + np.arange(mb)) % len(ds)
                yield default_collate([ds[int(i)] for i in idx])
                b += 1

        ppl = {}
        for i, name in enumerate(self.integ.cfg.domain_names):
            it = windows(self.datasets[i]) if self.datasets is not None else None
            res = training.evaluate(
                neox_args=neox_args,
                forward_step_fn=forward_step_func,
                data_iterator=it,
                model=model,
                verbose=False,
                timers=timers,
                reference_model=reference_model,
            )
            ppl[name] = res["lm_loss_ppl"]
        ppl["avg"] = float(np.mean(list(ppl.values())))
        self.integ.session.sink.write(iteration, {f"val_ppl/{k}": v for k, v in ppl.items()}, logged=True)
        print_rank_0(
            " acodm per-domain validation ppl at iteration {} | {}".format(
                iteration, " | ".join(f"{k}: {v:.3f}" for k, v in ppl.items())
            )
        )


def eval_output_pair(out, return_logits: bool):
    """NeoX's ``evaluate`` unpacks ``loss, metric_dict = forward_step(...)``. On the pipe path
    that is ``PipelineEngine.eval_batch``: DeeperSpeed returns a pair, PyPI DeepSpeed a bare
    loss tensor. Both become ``(loss, metrics)``; a ``return_logits`` call is left as it is."""
    if return_logits or isinstance(out, (tuple, list)):
        return out
    return out, {}


def wrap_forward_step(original):
    def forward_step(*args, **kwargs):
        out = original(*args, **kwargs)
        neox_args = kwargs.get("neox_args", args[2] if len(args) > 2 else None)
        if getattr(neox_args, "is_pipe_parallel", False):
            return eval_output_pair(out, bool(kwargs.get("return_logits", args[4] if len(args) > 4 else False)))
        return out

    return forward_step
