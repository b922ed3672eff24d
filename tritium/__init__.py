"""tritium: a compact LLM inference engine whose hot ops are Triton kernels.

Importing tritium first decides where kernels run (see tritium.platform): on a machine without CUDA it
switches Triton to its CPU interpreter before triton is imported.
"""
from tritium import platform as _platform  # noqa: F401  (must run before triton is imported)

__version__ = "0.1.0"
__all__ = ["LLM", "SamplingParams"]


def __getattr__(name):
    # The engine imports the model and every kernel: load it only when asked for.
    if name == "LLM":
        from tritium.engine.llm import LLM

        return LLM
    if name == "SamplingParams":
        from tritium.engine.sampling_params import SamplingParams

        return SamplingParams
    raise AttributeError(f"module 'tritium' has no attribute {name!r}")
