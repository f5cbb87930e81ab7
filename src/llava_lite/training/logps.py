"""Summed log-probabilities of the answers in a batch of preference pairs, padded or packed.

The policy's and the reference's, and the cached reference's, are all computed here, so the
three agree by construction.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from llava_lite.modeling import LlavaModel


def sequence_logps(
    model: LlavaModel, batch: dict[str, Any], forward: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probabilities of each sequence's trained tokens ``[2P]`` and the chosen answers'
    summed negative log-likelihood ``[]``.

    ``forward(model, batch)`` gives the model's ``LossTerms`` (logits at the trained positions
    only); ``batch["sequence_ids"]`` maps each position to its sequence, padded or packed.
    """
    terms = forward(model, batch)
    if terms.logits is None or terms.trained is None:
        raise ValueError("preference tuning needs the trained positions' logits: use the plain loss")
    targets = batch["labels"][:, 1:][terms.trained]  # [N]
    token_logps = -F.cross_entropy(terms.logits.float(), targets, reduction="none")  # [N]
    sequence = batch["sequence_ids"][:, 1:][terms.trained]  # [N]
    pairs = int(batch["pairs"])
    logps = token_logps.new_zeros(2 * pairs).index_add(0, sequence, token_logps)  # [2P]
    chosen_nll = -token_logps[sequence < pairs].sum()  # []
    return logps, chosen_nll
