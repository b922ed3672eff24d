from tritium.kernels.rmsnorm import add_rms_norm, head_rms_norm, rms_norm  # noqa: F401
from tritium.kernels.rope import apply_rope, qk_norm_rope, rope_cos_sin  # noqa: F401
from tritium.kernels.activation import silu_and_mul  # noqa: F401
from tritium.kernels.kv_store import store_kv  # noqa: F401
from tritium.kernels.prefill_attention import prefill_attention  # noqa: F401
from tritium.kernels.decode_attention import decode_attention  # noqa: F401
from tritium.kernels.sampling import sample  # noqa: F401
