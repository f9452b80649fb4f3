"""Before/after measurements of a pruned model against its dense self."""

from __future__ import annotations

from typing import Any, Sequence

import torch


@torch.no_grad()
def mean_pooled_embeddings(
    model: Any, tokenizer: Any, texts: Sequence[str], *, max_length: int = 128, batch_size: int = 32
) -> torch.Tensor:
    """Sentence embeddings as sentence-transformers computes them: masked mean, L2-normalised.

    Example:
        >>> emb = mean_pooled_embeddings(model, tokenizer, ["a sentence", "another"])  # doctest: +SKIP
        >>> emb.shape  # doctest: +SKIP
        torch.Size([2, 384])
    """
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(list(texts[i : i + batch_size]), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        enc = {k: v.to(device) for k, v in enc.items()}
        hidden = model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        out.append(torch.nn.functional.normalize(pooled.float(), dim=-1).cpu())
    return torch.cat(out)


def cosine_to_reference(embeddings: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per-row cosine similarity between two embedding matrices of the same shape.

    Example:
        >>> cosine_to_reference(torch.eye(2), torch.eye(2))
        tensor([1., 1.])
    """
    return torch.nn.functional.cosine_similarity(embeddings.float(), reference.float(), dim=-1)
