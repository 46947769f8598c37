"""TEST-ONLY: lets Megatron-LM's training loop run on a CPU-only machine (``.ci/megatron-cpu``).

Active only when MEGATRON_CPU_SHIM=1. Tensors Megatron asks to place on ``cuda`` are made on the
CPU (a TorchFunctionMode rewrites the device of factory calls and ``.to``/``.cuda``), the
``torch.cuda`` calls it makes unconditionally become no-ops, and ``initialize_megatron`` allows
no CUDA. Collectives run on gloo. Not part of the plugin.
"""

import os

try:  # helper builds may run a system python without torch
    import torch
except ImportError:
    torch = None

if os.environ.get("MEGATRON_CPU_SHIM") == "1" and torch is not None:
    import contextlib

    from torch.overrides import TorchFunctionMode

    def _cpu(dev):
        if isinstance(dev, torch.device) and dev.type == "cuda":
            return torch.device("cpu")
        if isinstance(dev, str) and dev.startswith("cuda"):
            return "cpu"
        if isinstance(dev, int) and not isinstance(dev, bool):
            return "cpu"
        return dev

    class _CudaToCpu(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = dict(kwargs or {})
            if "device" in kwargs:
                kwargs["device"] = _cpu(kwargs["device"])
            if func in (torch.Tensor.cuda,):
                return args[0]
            if func is torch.Tensor.to and len(args) > 1:
                args = (args[0], _cpu(args[1]), *args[2:])
            if kwargs.get("pin_memory"):
                kwargs["pin_memory"] = False
            return func(*args, **kwargs)

    _CudaToCpu().__enter__()  # for the whole process
    cuda = torch.cuda

    class _Stream:
        def __init__(self, *a, **k):
            pass

        def wait_stream(self, *a, **k):
            return None

        def synchronize(self):
            return None

        def record_event(self, *a, **k):
            return _Event()

    class _Event:
        def __init__(self, *a, **k):
            pass

        def record(self, *a, **k):
            return None

        def synchronize(self):
            return None

        def wait(self, *a, **k):
            return None

        def elapsed_time(self, other):
            return 0.0

        def query(self):
            return True

    # one distinct function per torch.cuda name: torch.compile/dynamo asserts when several
    # torch.cuda functions are replaced by the same object ("Duplicate torch object")
    def _returning(value):
        def stub(*a, **k):
            return value() if callable(value) else value

        return stub

    def _stream_ctx(*a, **k):
        return contextlib.nullcontext()

    def _current_device():
        return 0

    def _device_count():  # this node's ranks, so rank % device_count == local_rank holds
        return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))

    def _current_stream(*a, **k):
        return _Stream()

    def _get_rng_state(*a, **k):
        return torch.get_rng_state()

    def _set_rng_state(state, *a, **k):
        torch.set_rng_state(state)

    cuda.current_device = _current_device
    cuda.device_count = _device_count
    for name in (
        "set_device",
        "synchronize",
        "empty_cache",
        "manual_seed",
        "manual_seed_all",
        "reset_peak_memory_stats",
    ):
        setattr(cuda, name, _returning(None))
    cuda.get_rng_state = _get_rng_state
    cuda.set_rng_state = _set_rng_state
    cuda.Stream = _Stream
    cuda.Event = _Event
    cuda.stream = _stream_ctx
    cuda.current_stream = _current_stream
    cuda.default_stream = _current_stream
    for name in ("memory_allocated", "max_memory_allocated", "memory_reserved", "max_memory_reserved"):
        setattr(cuda, name, _returning(0))
    cuda.memory_stats = _returning(dict)

    class _Props:  # an "sm_90" device: Megatron picks its pre-Blackwell code paths
        major, minor, name, total_memory, multi_processor_count = 9, 0, "cpu (shim)", 2**34, 1

    cuda.get_device_properties = _returning(_Props)
    cuda.get_device_capability = _returning((9, 0))
    cuda.get_device_name = _returning("cpu (shim)")

    from neox_acodm.patches import hook as _hook

    def _allow_no_cuda(training):
        original = training.initialize_megatron

        def initialize_megatron(*a, **k):
            k["allow_no_cuda"] = True
            return original(*a, **k)

        training.initialize_megatron = initialize_megatron

    def _cpu_rng(random):  # the "CUDA" RNG states of Megatron's tracker are the CPU generator's
        def get_state(device="cuda", clone=False, graph_safe=False):
            return torch.get_rng_state()

        def set_state(new_state, device=-1, graph_safe=False):
            torch.set_rng_state(new_state)

        random._get_cuda_rng_state, random._set_cuda_rng_state = get_state, set_state

    _hook.install({"megatron.training.training": _allow_no_cuda, "megatron.core.tensor_parallel.random": _cpu_rng})
