"""Run by torchrun in test_tensor_parallel.py: every rank generates the same prompts; rank 0 writes the tokens.

    torchrun --nproc-per-node N torchrun_generate.py CHECKPOINT OUT_JSON
"""
import json
import os
import sys

from tritium import LLM, SamplingParams

PROMPTS = [[5, 17, 3, 99, 250], list(range(40, 70)), [7] * 20, [1]]


def main():
    checkpoint, out = sys.argv[1], sys.argv[2]
    params = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)
    with LLM(checkpoint, kvcache_block_size=16, tensor_parallel_size=int(os.environ["WORLD_SIZE"])) as llm:
        tokens = [o["token_ids"] for o in llm.generate(PROMPTS, params, use_tqdm=False)]
    if os.environ["RANK"] == "0":
        with open(out, "w") as f:
            json.dump(tokens, f)


if __name__ == "__main__":
    main()
