"""The batch-1 decode floor's weight bytes: every parameter once, of an MoE block only the routed experts."""
from benchmarks.latency import batch1_weight_bytes
from tritium.model.loader import load_model
from tritium.model.synthetic import ensure_checkpoint, make_config


def _bytes(params):
    return sum(p.numel() * p.element_size() for p in params)


def test_dense_model_reads_every_weight(tiny_checkpoint):
    model = load_model(tiny_checkpoint)
    assert batch1_weight_bytes(model) == _bytes(model.parameters())


def test_moe_model_reads_only_its_top_k_experts():
    cfg = make_config("qwen3-moe-tiny")
    model = load_model(ensure_checkpoint("qwen3-moe-tiny"))
    experts = _bytes(model.model.layers[0].mlp.experts.parameters())  # layer 1 is dense (mlp_only_layers)
    unread = experts * (cfg["num_experts"] - cfg["num_experts_per_tok"]) // cfg["num_experts"]
    assert batch1_weight_bytes(model) == _bytes(model.parameters()) - unread > 0
