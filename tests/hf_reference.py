"""transformers as the oracle: a plain greedy loop on the same checkpoint."""
import torch


def greedy_ref(model, prompt, n):
    """The n greedy tokens transformers generates after prompt (token ids), recomputing the whole sequence."""
    ids = torch.tensor([prompt])
    with torch.no_grad():
        for _ in range(n):
            nxt = model(ids).logits[0, -1].argmax()
            ids = torch.cat([ids, nxt.view(1, 1)], dim=1)
    return ids[0, len(prompt):].tolist()


def partings(model, prompts, runs_a, runs_b, device="cuda"):
    """Where two greedy runs of the same prompts first differ: for each pair that parts, how far apart the two
    chosen tokens are in the fp32 model's logits of the common prefix, and that position's top-2 gap."""
    parted, gaps = [], []
    for p, a, b in zip(prompts, runs_a, runs_b):
        if a == b:
            continue
        k = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
        with torch.no_grad():
            logits = model(torch.tensor([p + a[:k]], device=device)).logits[0, -1]
        top2 = logits.topk(2).values
        parted.append(float(abs(logits[a[k]] - logits[b[k]])))
        gaps.append(float(top2[0] - top2[1]))
    return parted, gaps
