"""TEST-ONLY: lets stock GPT-NeoX run on a CPU-only machine (integration.md section 9).

Active only when NEOX_CPU_SHIM=1 and torch is importable (helper builds call a system python
without torch). Redirects the torch.cuda calls NeoX makes unconditionally to the CPU and makes
``initialize_megatron`` allow no CUDA. Not part of the plugin.
"""

import os

if os.environ.get("NEOX_CPU_SHIM") == "1":
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        # "devices" of this node: its local ranks (deepspeed.launcher.launch sets LOCAL_SIZE), so
        # NeoX's rank % device_count == local_rank holds on every node of a multi-node job
        world = int(
            os.environ.get("LOCAL_SIZE") or os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("WORLD_SIZE", "1")
        )
        cuda = torch.cuda

        # one distinct function per torch.cuda name: torch.compile/dynamo asserts when several
        # torch.cuda functions are replaced by the same object ("Duplicate torch object")
        def _current_device():
            return "cpu"

        def _device_count():
            return world

        def _set_device(*a, **k):
            return None

        def _synchronize(*a, **k):
            return None

        def _manual_seed(*a, **k):
            return None

        def _manual_seed_all(*a, **k):
            return None

        def _get_rng_state(*a, **k):
            return torch.get_rng_state()

        def _set_rng_state(state, *a, **k):
            torch.set_rng_state(state)

        def _zero(*a, **k):
            return 0

        def _empty_cache(*a, **k):
            return None

        cuda.current_device = _current_device
        cuda.device_count = _device_count
        cuda.set_device = _set_device
        cuda.synchronize = _synchronize
        cuda.manual_seed = _manual_seed
        cuda.manual_seed_all = _manual_seed_all
        cuda.get_rng_state = _get_rng_state
        cuda.set_rng_state = _set_rng_state
        cuda.memory_allocated = _zero
        cuda.max_memory_allocated = _zero
        cuda.memory_reserved = _zero
        cuda.max_memory_reserved = _zero
        cuda.empty_cache = _empty_cache
        cuda.LongTensor = lambda *a, **k: torch.LongTensor(*a, **k)
        cuda.FloatTensor = lambda *a, **k: torch.FloatTensor(*a, **k)
        cuda.IntTensor = lambda *a, **k: torch.IntTensor(*a, **k)
        cuda.HalfTensor = lambda *a, **k: torch.HalfTensor(*a, **k)
        torch.Tensor.cuda = lambda self, *a, **k: self
        torch.nn.Module.cuda = lambda self, *a, **k: self

        def _allow_no_cuda(training):
            original = training.initialize_megatron

            def initialize_megatron(neox_args, allow_no_cuda=True):
                return original(neox_args, allow_no_cuda=True)

            training.initialize_megatron = initialize_megatron

        from neox_acodm.patches import hook as _hook

        _hook.install({"megatron.training": _allow_no_cuda})

        # ACODM_TRACE_DIR (the multi-node check): every rank appends, after each step, its global
        # rank, host namespace, step and the weights it will plan the next step with; state-file
        # writes are recorded too. Observation only: nothing the run computes changes.
        trace_dir = os.environ.get("ACODM_TRACE_DIR")
        if trace_dir:
            import json

            def _trace(record):
                rank = os.environ.get("RANK", "?")
                with open(os.path.join(trace_dir, f"rank{rank}.jsonl"), "a") as f:
                    f.write(json.dumps({"rank": int(rank), "node": os.environ.get("ACODM_NODE", "?"), **record}) + "\n")

            def _trace_session(session_mod):
                end_step = session_mod.MixingSession.end_step

                def traced_end_step(self, *a, **k):
                    out = end_step(self, *a, **k)
                    _trace({"step": self.rt.step, "weights": [float(w) for w in self.rt.weights]})
                    return out

                session_mod.MixingSession.end_step = traced_end_step

            def _trace_checkpoint(ckpt_mod):
                atomic_save = ckpt_mod.atomic_save

                def traced_atomic_save(obj, path, *a, **k):
                    out = atomic_save(obj, path, *a, **k)
                    _trace({"saved": str(path)})
                    return out

                ckpt_mod.atomic_save = traced_atomic_save

            _hook.install({"neox_acodm.session": _trace_session, "neox_acodm.checkpoint": _trace_checkpoint})
