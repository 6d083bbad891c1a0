import pytest

from fmix.metrics import PrivacyRow, score_pp


def test_score_pp_reference_values():
    assert score_pp(0, 0, 0, 0) == pytest.approx(1.0)
    assert score_pp(1, 1, 1, 1) == pytest.approx(0.0)
    # 0.4 * (1 - (0.5 + 0.1) / 2) + 0.6 * (1 - (0.6 + 0.2) / 2) = 0.28 + 0.36
    assert score_pp(0.5, 0.1, 0.6, 0.2) == pytest.approx(0.64)
    assert score_pp(0.5, 0.1, 0.6, 0.2, alpha=0.5, beta=0.5) == pytest.approx(0.5 * 0.7 + 0.5 * 0.6)
    assert score_pp(1, 1, 0, 0) == pytest.approx(0.6)  # only the attack level counts then


@pytest.mark.parametrize(
    ("args", "error", "message"),
    [
        ((1.2, 0, 0, 0), ValueError, r"s1 in \[0, 1\], got 1.2"),
        ((0, 0, -0.1, 0), ValueError, r"s3 in \[0, 1\]"),
        ((0, 0, 0, 0, 1.5), ValueError, r"alpha in \[0, 1\]"),
        ((0, "0.5", 0, 0), TypeError, "s2 to be a number"),
        ((0, 0, 0, True), TypeError, "s4 to be a number"),
    ],
)
def test_score_pp_errors(args, error, message):
    with pytest.raises(error, match=message):
        score_pp(*args)


def test_privacy_row():
    row = PrivacyRow("ppfrfd", s1=0.5, s2=0.1, s3=0.6, s4=0.2, psnr=16.5, top5=0.4, floor=0.45, score_cls=0.9)
    out = row.to_dict()
    assert list(out) == ["method", "S1", "S2", "S3", "S4", "psnr", "top5", "floor", "Score_pp", "Score_cls"]
    assert out["Score_pp"] == pytest.approx(0.64) and out["Score_cls"] == 0.9 and out["method"] == "ppfrfd"
    pending = PrivacyRow("adaptive", s1=0.5, s2=None, s3=0.6, s4=None, psnr=15.0)
    assert pending.score_pp is None and pending.to_dict()["Score_pp"] is None
    negative_ssim = PrivacyRow("x", s1=-0.01, s2=0.0, s3=-0.02, s4=0.0, psnr=5.0)
    assert negative_ssim.score_pp == pytest.approx(1.0)  # SSIM below 0 counts as 0
