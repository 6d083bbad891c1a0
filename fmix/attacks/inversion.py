"""Model inversion of a trained FR model (docs/design.md §5): recover private identities from the model alone.

(a) :class:`EmbeddingDecoder`: the attacker trains a decoder on *public* faces from the
target's embeddings back to images, then decodes each private identity's template (its
normalised class centre in the margin head).
(b) :func:`optimise_identity_images`: gradient ascent on input images, through the target's
masker and network, on the identity's cosine logit, under a total-variation prior, starting
from the public mean face.
Both are scored by an independent evaluator (:func:`identity_scores`).
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fmix.progress import Heartbeat


class EmbeddingDecoder(nn.Module):
    """Embedding (B, E) -> RGB face (B, 3, 112, 112) in [0, 255].

    Args:
        embedding_size: the target's embedding dimension.
        width: channels of the first feature map (halved at each of the 4 upsamplings).
    """

    def __init__(self, embedding_size: int, width: int = 128) -> None:
        super().__init__()
        self.width = width
        self.project = nn.Linear(embedding_size, width * 7 * 7)
        layers: list[nn.Module] = []
        channels = width
        for _ in range(4):  # 7 -> 14 -> 28 -> 56 -> 112
            out = max(16, channels // 2)
            layers += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(channels, out, 3, padding=1),
                nn.BatchNorm2d(out),
                nn.LeakyReLU(0.2),
            ]
            channels = out
        layers += [nn.Conv2d(channels, 3, 3, padding=1)]
        self.decode = nn.Sequential(*layers)

    def forward(self, embeddings: Tensor) -> Tensor:
        if embeddings.dim() != 2 or embeddings.shape[1] != self.project.in_features:
            raise ValueError(
                f"Expected embeddings of shape (B, {self.project.in_features}), got {tuple(embeddings.shape)}"
            )
        x = self.project(F.normalize(embeddings.float(), dim=1)).view(-1, self.width, 7, 7)
        return 255.0 * torch.sigmoid(self.decode(x))


def train_decoder(
    embed,
    public_faces: Tensor,
    embedding_size: int,
    steps: int = 300,
    batch_size: int = 32,
    seconds: float | None = None,
    seed: int = 0,
    lr: float = 2e-3,
    device: torch.device | str = "cpu",
) -> tuple[EmbeddingDecoder, list[float]]:
    """Fit a decoder from the target's embeddings of public faces back to those faces (L1).

    Args:
        embed: the target's embedding function, RGB (B, 3, 112, 112) in [0, 255] -> (B, E).
        public_faces: the attacker's public faces, (N, 3, 112, 112) float in [0, 255].
        embedding_size: E.
        steps: optimisation steps (upper bound).
        batch_size: faces per step.
        seconds: optional wall-clock budget.
        seed: seed of the decoder's initialisation and batch order.
        lr: Adam learning rate.
        device: where the decoder trains (``embed`` gets CPU batches and may return them anywhere).

    Returns:
        (decoder in eval mode, on ``device``; L1 loss per step).
    """
    if public_faces.dim() != 4 or public_faces.shape[1:] != (3, 112, 112):
        raise ValueError(f"Expected public faces of shape (N, 3, 112, 112), got {tuple(public_faces.shape)}")
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    with torch.no_grad():
        embeddings = torch.cat([embed(public_faces[i : i + 256]).to(device) for i in range(0, len(public_faces), 256)])
    decoder = EmbeddingDecoder(embedding_size).to(device)
    optimizer = torch.optim.Adam(decoder.parameters(), lr=lr)
    losses, start = [], time.perf_counter()
    beat = Heartbeat("invert decoder", total=steps, budget_s=seconds)
    for step in range(steps):
        index = torch.randint(len(public_faces), (batch_size,), generator=generator)
        loss = F.l1_loss(decoder(embeddings[index.to(device)]), public_faces[index].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        beat(step + 1, l1=losses[-1])
        if seconds is not None and time.perf_counter() - start > seconds:
            break
    return decoder.eval(), losses


def total_variation(images: Tensor) -> Tensor:
    """Mean absolute difference of neighbouring pixels, per image (B,)."""
    dx = (images[..., :, 1:] - images[..., :, :-1]).abs().mean(dim=(1, 2, 3))
    dy = (images[..., 1:, :] - images[..., :-1, :]).abs().mean(dim=(1, 2, 3))
    return dx + dy


def optimise_identity_images(
    logits_fn,
    identities: Tensor,
    start: Tensor,
    steps: int = 100,
    lr: float = 2.0,
    tv_weight: float = 0.05,
    seconds: float | None = None,
) -> Tensor:
    """Gradient ascent on each identity's logit, from a start image, with a total-variation prior.

    Args:
        logits_fn: RGB (B, 3, 112, 112) in [0, 255] -> the target's class logits (B, num_classes),
            differentiable (masker, backbone and head of the target).
        identities: class index to reconstruct, one per image (B,).
        start: initial image (3, 112, 112), e.g. the public mean face.
        steps: Adam steps.
        lr: Adam step size, in pixel units.
        tv_weight: weight of the total-variation prior.
        seconds: optional wall-clock budget (fewer steps when it runs out).

    Returns:
        The optimised images (B, 3, 112, 112) in [0, 255].
    """
    images = start.detach().expand(len(identities), -1, -1, -1).clone().requires_grad_(True)
    optimizer = torch.optim.Adam([images], lr=lr)
    begin = time.perf_counter()
    beat = Heartbeat("invert optimise", total=steps, budget_s=seconds)
    for step in range(steps):
        if seconds is not None and time.perf_counter() - begin > seconds:
            break
        beat(step)
        logits = logits_fn(images.clamp(0, 255))
        target = logits.gather(1, identities[:, None]).squeeze(1)
        loss = (-target + tv_weight * total_variation(images)).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return images.detach().clamp(0, 255)


@torch.no_grad()
def identity_scores(evaluator_logits, evaluator_embed, images: Tensor, identities: Tensor, templates: Tensor) -> dict:
    """Score reconstructions with the independent evaluator.

    Args:
        evaluator_logits: RGB -> the evaluator's class logits (its classes are the private identities).
        evaluator_embed: RGB -> the evaluator's normalised embeddings.
        images: reconstructions (B, 3, 112, 112) in [0, 255].
        identities: the identity each image should show (B,).
        templates: the evaluator's clean template of every identity (num_classes, E), normalised.

    Returns:
        top1, top5 and the mean cosine of each reconstruction to its identity's clean template.
    """
    logits = evaluator_logits(images)
    top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
    cosine = (evaluator_embed(images) * templates[identities]).sum(dim=1)
    return {
        "top1": (top5[:, 0] == identities).float().mean().item(),
        "top5": (top5 == identities[:, None]).any(dim=1).float().mean().item(),
        "template_cosine": cosine.mean().item(),
        "chance": 1.0 / logits.shape[1],
    }
