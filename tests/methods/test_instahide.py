"""InstaHide: 4 RGB faces per sample, weights capped at 0.65, a random sign per pixel."""

import torch

from fmix.methods import build_method
from fmix.models.encoders import encoder_spec
from fmix.params import MixingParams, TrainParams


def test_instahide_trains_on_four_pixel_faces_with_capped_weights_read_as_magnitudes(make_trainer):
    trainer = make_trainer(
        "instahide", MixingParams(k_values=(2,), sign_flip=False, noise=1.0)
    )  # its own mixing overrides the section
    assert trainer.mixing == MixingParams(
        k_values=(4,), weight_law="instahide", cap=0.65, sign_flip=True, permute_channels=False, noise=0.0
    )
    seen = []
    original = trainer.fr_loss
    trainer.fr_loss = lambda x, labels, weights: (
        seen.append((x.detach(), labels, weights)),
        original(x, labels, weights),
    )[1]
    index = trainer.batches(0)[0]
    batch = next(iter(trainer.loader(0)))
    state = trainer.generator.get_state()
    x, labels = trainer.fr_step(batch, 0, 0)
    assert x.shape == (8, 3, 112, 112)  # pixels, no frequency transform
    torch.testing.assert_close(x, (trainer.train_set.faces.float_images(index) - 127.5) / 128.0)
    mixed, constituents, weights = seen[0]
    assert trainer.state.stats.k == {4: 8}
    assert ((weights > 0).sum(dim=1) == 4).all() and (weights.max(dim=1).values <= 0.65 + 1e-6).all()
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(8))
    # Replay the draws: partners, then weights (the sign mask comes last). The network reads |x|,
    # so training skips drawing the mask: the sample is the plain weighted mix.
    generator = torch.Generator().set_state(state)
    from fmix.freq import sample_mixing

    draw = sample_mixing(labels, 4, 4, "instahide", 0.65, (3, 112, 112), generator)
    plain = (draw.weights[:, :, None, None, None] * x[draw.partners]).sum(dim=1) / draw.weights.norm(dim=1)[
        :, None, None, None
    ]
    torch.testing.assert_close(mixed, plain)
    assert torch.equal(constituents, labels[draw.partners])
    assert trainer.net.backbone.sign_invariant and not trainer.protection.mixing.sign_flip
    assert torch.equal(trainer.net.backbone.eval()(mixed * draw.sign), trainer.net.backbone(mixed))


def test_instahide_is_tested_on_plain_rgb_and_attacked_in_the_pixel_domain():
    method = build_method(TrainParams(method="instahide"))
    assert method.attack_surface == "pixels" and method.mixes
    encoder = method.build_encoder(None)
    assert encoder_spec("instahide", encoder) == {"method": "instahide", "kind": "rgb"} and encoder.channels == 3
    assert TrainParams(method="instahide").method == "instahide"
