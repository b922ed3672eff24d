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
