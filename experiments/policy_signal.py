"""What a per-sample k policy could read: which signals predict how much a larger k costs a sample.

Makes: docs/results/2026-11-29-issue-12-without-sign-mask.md ("The game, per sample": which signals
predict what a larger k costs).

Usage: python experiments/policy_signal.py models/sweep/adaptive/model.pt [--aligned data/aligned]
       [--splits data/splits] [--faces 640] [--repeats 4]
Needs a trained mixing model (`fmix train`) and the pipeline's aligned faces and splits.

With the FR network frozen, every one of ``--faces`` private training faces is mixed with each k of
``mixing.k_values`` (``--repeats`` partner draws each, batches of ``train.batch_size``), and scored
with the two rewards the game can use (the mixed-label loss, the anchor's own label). Printed:
- the mean loss per k, and each sample's slope of the loss in k: how reliable it is between two
  halves of the draws, and its correlation with the sample's un-mixed loss;
- how well three signals predict the un-mixed loss on held-out faces: the strategy network's
  difficulty head (trained here for 300 steps on the masked faces alone), a linear probe of the FR
  embedding, and the FR network's confidence (largest cosine to a class centre, no label);
- the oracle allocation: each sample's best k under the price that brings the mean k to 4, as
  the mean k per quartile of the un-mixed loss and of the confidence.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from fmix.data.faces import load_face_set
from fmix.masker.protection import MixingConfig, Protection
from fmix.models import ConfidenceSignal, StrategyNetwork
from fmix.models.artifact import load_trained_model


def quartile_means(values: np.ndarray, by: np.ndarray) -> list[float]:
    """Mean of ``values`` in each quartile of ``by`` (quartile 1: the smallest ``by``)."""
    bins = np.digitize(by, np.quantile(by, [0.25, 0.5, 0.75]))
    return [round(float(values[bins == q].mean()), 2) for q in range(4)]


def held_out_corr(prediction: torch.Tensor, target: torch.Tensor) -> float:
    prediction = prediction.detach().numpy()
    return float(np.corrcoef(prediction, target.numpy())[0, 1]) if prediction.std() > 0 else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model")
    parser.add_argument("--aligned", default="data/aligned")
    parser.add_argument("--splits", default="data/splits")
    parser.add_argument("--faces", type=int, default=640)
    parser.add_argument("--repeats", type=int, default=4)
    args = parser.parse_args()
    torch.manual_seed(0)
    model, record = load_trained_model(args.model)
    faces = load_face_set(args.aligned, f"{args.splits}/private_train.csv")
    generator = torch.Generator().manual_seed(0)
    batch, k_values = record.params.batch_size, tuple(record.mixing.k_values)
    count = min(args.faces, len(faces)) // batch * batch
    order = torch.randperm(len(faces), generator=generator)[:count]
    protection = Protection(None, MixingConfig.from_params(record.mixing), k_values)
    confidence_of = ConfidenceSignal(model.backbone, model.head)

    def loss(x, labels, weights):
        return model.head(model.backbone(x), labels, weights)

    shape = (count, len(k_values), args.repeats)
    rewards = {"mixed": np.zeros(shape), "anchor": np.zeros(shape)}
    unmixed, confidence = np.zeros(count), np.zeros(count)
    with torch.no_grad():
        for start in range(0, count, batch):
            rows = slice(start, start + batch)
            x = model.encoder(faces.float_images(order[rows]))
            labels, own = faces.labels[order[rows]], torch.ones(batch, 1)
            unmixed[rows] = loss(x, labels[:, None], own).numpy()
            confidence[rows] = confidence_of(x).numpy()
            for j, k in enumerate(k_values):
                for r in range(args.repeats):
                    mixed = protection.protect_encoded(x, labels, k, generator)
                    rewards["mixed"][rows, j, r] = loss(mixed.x, labels[mixed.partners], mixed.weights).numpy()
                    rewards["anchor"][rows, j, r] = loss(mixed.x, labels[:, None], own).numpy()
    ks = np.array(k_values, dtype=float)
    centred = ks - ks.mean()
    halves = (slice(0, args.repeats // 2), slice(args.repeats // 2, args.repeats))
    print(f"{count} faces, k in {list(k_values)}, {args.repeats} partner draws per k")
    for name, values in rewards.items():
        slopes = [
            ((values[:, :, h].mean(2) - values[:, :, h].mean((1, 2))[:, None]) * centred).sum(1) / (centred**2).sum()
            for h in halves
        ]
        slope = (slopes[0] + slopes[1]) / 2
        print(
            f"reward {name}: mean loss by k {values.mean((0, 2)).round(2).tolist()}; per-sample slope {slope.mean():.3f} ± {slope.std():.3f}, "
            f"split-half reliability {np.corrcoef(*slopes)[0, 1]:.3f}, corr with the un-mixed loss {np.corrcoef(slope, unmixed)[0, 1]:.3f}, "
            f"with the confidence {np.corrcoef(slope, confidence)[0, 1]:.3f}"
        )
        value = values.mean(2)
        for price in np.linspace(0.0, 20.0, 401):
            best = ks[(value - price * ks).argmax(1)]
            if best.mean() <= 4.0:
                break
        print(
            f"  oracle k at mean {best.mean():.2f} (price {price:.2f}): by un-mixed-loss quartile {quartile_means(best, unmixed)}, "
            f"by confidence quartile {quartile_means(best, confidence)}"
        )

    # Predictors of the un-mixed loss, on held-out faces of the whole training set.
    embeddings, losses, masked = [], [], []
    with torch.no_grad():
        for start in range(0, len(faces), 256):
            index = torch.arange(start, min(len(faces), start + 256))
            x = model.encoder(faces.float_images(index))
            embedding = model.backbone(x)
            masked.append(x)
            embeddings.append(embedding)
            losses.append(model.head(embedding, faces.labels[index][:, None], torch.ones(len(index), 1)))
    x, embedding, target = torch.cat(masked), torch.cat(embeddings), torch.cat(losses)
    split = torch.randperm(len(faces), generator=generator)
    train, test = split[: len(faces) * 3 // 4], split[len(faces) * 3 // 4 :]
    policy = StrategyNetwork(x.shape[1], k_values)
    optimizer = torch.optim.Adam(policy.parameters(), lr=0.002)
    for _ in range(300):
        rows = train[torch.randint(len(train), (batch,), generator=generator)]
        optimizer.zero_grad()
        policy.difficulty_loss(x[rows], target[rows]).backward()
        optimizer.step()
    with torch.no_grad():
        head = policy.difficulty(policy.features(x[test])).squeeze(1)
    design = torch.cat([embedding, torch.ones(len(faces), 1)], 1)
    probe = design[test] @ torch.linalg.lstsq(design[train], target[train, None]).solution
    with torch.no_grad():
        cosine = model.head.cosines(embedding[test]).amax(1)
    print(
        f"held-out correlation with the un-mixed loss ({len(test)} faces): difficulty head on the masked face {held_out_corr(head, target[test]):.3f}, "
        f"linear probe of the FR embedding {held_out_corr(probe.squeeze(1), target[test]):.3f}, FR confidence {held_out_corr(cosine, target[test]):.3f}"
    )


if __name__ == "__main__":
    main()
