"""End-to-end benchmark (placeholder until the engine lands): writes the synthetic checkpoint for this machine
(qwen3-0.6b on a GPU, tiny on the CPU) and times a transformers forward on it."""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from tritium.platform import HAS_CUDA  # noqa: E402
from tritium.model.synthetic import ensure_checkpoint  # noqa: E402


def main():
    preset = "qwen3-0.6b" if HAS_CUDA else "tiny"
    t0 = time.perf_counter()
    path = ensure_checkpoint(preset)
    print(f"checkpoint {preset}: {path} ({time.perf_counter() - t0:.1f} s)")
    from transformers import AutoModelForCausalLM

    device = "cuda" if HAS_CUDA else "cpu"
    model = AutoModelForCausalLM.from_pretrained(path, dtype="auto").to(device)
    ids = torch.randint(0, model.config.vocab_size, (4, 256), device=device)
    with torch.no_grad():
        model(ids)
        t0 = time.perf_counter()
        logits = model(ids).logits
        if HAS_CUDA:
            torch.cuda.synchronize()
    print(f"transformers forward 4 x 256 tokens: {time.perf_counter() - t0:.3f} s, logits {tuple(logits.shape)}")


if __name__ == "__main__":
    main()
