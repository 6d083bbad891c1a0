"""PPFR-FD: 36 channels left once the low frequencies are dropped (the highest-energy ones), shuffled per training sample."""

import torch

from fmix.freq import low_frequency_channels
from fmix.masker.build import public_channel_stats
from fmix.params import MixingParams


def test_keeps_the_highest_energy_channels_and_shuffles_each_sample(make_trainer, pipeline_sample):
    trainer = make_trainer("ppfrfd_faithful", MixingParams())
    assert trainer.mixing.permute_channels and not trainer.method.mixes
    kept = trainer.encoder.transform.mask.kept.tolist()
    assert len(kept) == 36 and not set(kept) & set(low_frequency_channels(2))
    from fmix.data.faces import read_face_list

    public = [pipeline_sample["aligned"] / path for path, _ in read_face_list(pipeline_sample["splits"] / "public.csv")]
    energy = public_channel_stats(public, 2)[0].energy  # at the masker's u = 2
    candidates = sorted(set(range(192)) - set(low_frequency_channels(2)), key=lambda c: -energy[c].item())
    assert sorted(kept) == sorted(candidates[:36])
    # Not the nearly empty lowest-energy channels (7.6e-9 of the energy at u = 2), which verified at chance.
    assert energy[kept].min() >= energy[candidates[36:]].max()
    seen = []
    original = trainer.fr_loss
    trainer.fr_loss = lambda x, *rest: (seen.append(x.detach()), original(x, *rest))[1]
    x, _ = trainer.fr_step(next(iter(trainer.loader(0))), 0, 0)
    shown = seen[0]
    assert shown.shape == x.shape == (8, 36, 28, 28) and not torch.equal(shown, x)
    orders = []
    for b in range(8):  # each sample's channels are a permutation of its own, in an order of its own
        match = [int((x[b] - shown[b, j]).abs().flatten(1).amax(1).argmin()) for j in range(36)]
        assert sorted(match) == list(range(36))
        orders.append(tuple(match))
    assert len(set(orders)) == 8
