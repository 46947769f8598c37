"""neox_acodm: Actor-Critic Online Data Mixing (AC-ODM) for GPT-NeoX and Megatron.

The core (config, plan, mixers, reward maths, runtime) imports only torch and numpy;
framework adapters live in ``neox_acodm.neox`` / ``neox_acodm.megatron`` and are never
imported together. Importing this package patches nothing.
"""

from .config import ACODMConfig, ConfigError, load_config, parse_config
from .plan import DomainCursors, StepPlan, build_step_plan, normalize_weights
from .runtime import MixingRuntime

__version__ = "0.1.0"

__all__ = ["ACODMConfig", "ConfigError", "DomainCursors", "MixingRuntime", "StepPlan",
           "__version__", "build_step_plan", "load_config", "normalize_weights", "parse_config"]
