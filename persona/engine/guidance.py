"""Persona strength: classifier-free guidance between the persona's row and a bare one.

Sanchez et al. 2023 ("Stay on topic with classifier-free guidance"): next to each reply runs a
*bare* row, the same conversation without the persona (no prompt tensor, the model's own system
text, as `--no-persona` renders it), fed the same reply tokens. Each step mixes the two:

    guided = log p_bare + s * (log p_persona - log p_bare)

s = 1 is the persona as trained (the bare row is then never built: no cost, the same reply token
for token); s > 1 pushes each token further from what the model would say without the persona;
0 <= s < 1 pulls towards it (s = 0 is the bare model). The mix is made on log-probabilities
and shifted by the persona row's own log-normaliser, so the scores keep the scale of today's
logits (what the repetition penalty and temperature act on) and only move where the two rows
disagree; the shift is the same for every token of a row, so the distribution is the formula's.
"""

from __future__ import annotations

import torch


def guided_logits(persona: torch.Tensor, bare: torch.Tensor, strength: float) -> torch.Tensor:
    """persona, bare: (B, V) or (V,) next-token logits of the two rows; the guided scores, same shape.

    Equal, up to one constant per row, to log_softmax(bare) + s * (log_softmax(persona) -
    log_softmax(bare)); exactly `persona` (as float32) at s = 1.
    """
    persona = persona.float()
    if strength == 1.0:
        return persona
    step = torch.log_softmax(persona, dim=-1) - torch.log_softmax(bare.float(), dim=-1)  # (B, V)
    return persona + (strength - 1.0) * step  # (B, V)
