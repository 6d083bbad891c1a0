"""fmix.device: one rule for device strings (CUDA faked with monkeypatch), the params' device keys,
and the CUDA-only checks (marked ``cuda``: skipped without a GPU, run by benchmarks/gpu_check.sh)."""

import dataclasses

import pytest
import torch

from fmix.device import budget_clock, check_device_spec, clock_function, rank_device, resolve_device
from fmix.params import AttackParams, EvaluateParams, EvaluatorParams, ParamsError, TrainParams, section_from_mapping


@pytest.fixture
def fake_cuda(monkeypatch):
    """``fake_cuda(count)``: torch reports ``count`` CUDA devices (0: no CUDA)."""

    def fake(count: int) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)

    return fake


def test_auto_is_cuda_when_available_else_cpu(fake_cuda):
    fake_cuda(0)
    assert resolve_device("auto") == torch.device("cpu") and resolve_device() == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    fake_cuda(2)
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("cuda") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("cpu") == torch.device("cpu")  # an explicit CPU stays the CPU


def test_a_cuda_request_without_cuda_is_an_error(fake_cuda):
    fake_cuda(0)
    with pytest.raises(
        ValueError,
        match=r"device 'cuda' asks for CUDA, but CUDA is not available on this machine \(use 'auto' or 'cpu'\)",
    ):
        resolve_device("cuda")
    with pytest.raises(ValueError, match=r"device 'cuda:0' asks for CUDA, but CUDA is not available"):
        resolve_device("cuda:0")


def test_an_index_past_the_device_count_is_an_error(fake_cuda):
    fake_cuda(2)
    with pytest.raises(
        ValueError, match=r"device 'cuda:2' does not exist: this machine has 2 CUDA device\(s\), cuda:0 to cuda:1"
    ):
        resolve_device("cuda:2")


@pytest.mark.parametrize(
    "junk", ["", "gpu", "CUDA", "cuda:", "cuda:-1", "cuda:01", "cuda:x", " cpu", "cpu:0", "mps", "cuda:0,1"]
)
def test_junk_strings_are_refused_by_name(junk, fake_cuda):
    fake_cuda(4)
    with pytest.raises(
        ValueError,
        match=r"Expected device to be one of auto \| cpu \| cuda \| cuda:N \(N a device index\), got "
        + repr(junk).replace("(", r"\("),
    ):
        resolve_device(junk)
    with pytest.raises(ValueError, match=r"Expected train\.device to be one of"):
        check_device_spec(junk, "train.device")


def test_non_strings_are_a_type_error():
    with pytest.raises(TypeError, match=r"Expected device to be a string \(auto \| cpu \| cuda \| cuda:N\), got int"):
        resolve_device(0)  # type: ignore[arg-type]
    assert check_device_spec("cuda:12") == "cuda:12"


def test_ranks_spread_over_the_gpus_with_auto_and_cuda_only(fake_cuda):
    fake_cuda(2)
    assert [rank_device("auto", r) for r in range(3)] == [
        torch.device("cuda", 0),
        torch.device("cuda", 1),
        torch.device("cuda", 0),
    ]
    assert rank_device("cuda", 3) == torch.device("cuda", 1)
    assert rank_device("cuda:1", 0) == torch.device("cuda", 1) and rank_device("cpu", 1) == torch.device("cpu")
    fake_cuda(0)
    assert rank_device("auto", 5) == torch.device("cpu")


def test_budget_clock_counts_cpu_seconds_on_the_cpu_and_wall_seconds_on_cuda():
    import time

    assert budget_clock(torch.device("cpu")) == "process" and budget_clock("cpu") == "process"
    assert budget_clock(torch.device("cuda", 1)) == "wall" and budget_clock("cuda") == "wall"
    assert clock_function("process") is time.process_time and clock_function("wall") is time.perf_counter
    with pytest.raises(ValueError, match="Expected clock 'process' or 'wall', got 'auto'"):
        clock_function("auto")


@pytest.mark.parametrize(
    "cls, section",
    [(TrainParams, "train"), (EvaluateParams, "evaluate"), (EvaluatorParams, "evaluator"), (AttackParams, "attack")],
)
def test_params_sections_take_a_device_checked_without_cuda(cls, section, fake_cuda):
    fake_cuda(0)  # a file written for a GPU machine still loads here: only the form is checked
    assert cls().device == "auto"
    assert section_from_mapping(cls, {"device": "cuda:3"}, section).device == "cuda:3"
    with pytest.raises(
        ParamsError,
        match=rf"Expected {section}\.device to be one of auto \| cpu \| cuda \| cuda:N \(N a device index\), got 'gpu'",
    ):
        section_from_mapping(cls, {"device": "gpu"}, section)
    with pytest.raises(ParamsError, match=rf"{section}\.device must be str, got 1"):
        section_from_mapping(cls, {"device": 1}, section)


def test_attack_config_resolves_its_device_and_budget_clock(fake_cuda):
    from fmix.attacks.reconstruction import AttackConfig, ReconstructionAttack

    fake_cuda(0)
    attack = ReconstructionAttack(AttackConfig())
    assert (
        AttackConfig().device == "auto" and attack.device == torch.device("cpu") and attack.clock == "process"
    )  # CPU runs as before
    assert ReconstructionAttack(AttackConfig(clock="wall")).clock == "wall"
    assert AttackConfig.from_params(dataclasses.replace(AttackParams(), device="cpu")).device == "cpu"
    with pytest.raises(ValueError, match="Expected device to be one of auto"):
        AttackConfig(device="gpu0")
    with pytest.raises(ValueError, match="device 'cuda' asks for CUDA"):
        ReconstructionAttack(AttackConfig(device="cuda"))
    fake_cuda(1)
    gpu_attack = ReconstructionAttack(AttackConfig(device="auto"))  # nothing is built before fit()
    assert gpu_attack.device == torch.device("cuda", 0) and gpu_attack.clock == "wall"


@pytest.mark.cuda
def test_on_cuda_auto_picks_the_gpu_and_models_run_there():
    from fmix.models.iresnet import build_backbone

    device = resolve_device("auto")
    assert (
        device.type == "cuda"
        and resolve_device(f"cuda:{torch.cuda.device_count() - 1}").index == torch.cuda.device_count() - 1
    )
    net = build_backbone("iresnet18", 3, 112, embedding_size=16, width=0.125).to(device).eval()
    x = torch.rand(4, 3, 112, 112)
    with torch.no_grad():
        on_gpu = net(x.to(device)).cpu()
        on_cpu = net.cpu()(x)
    torch.testing.assert_close(on_gpu, on_cpu, atol=1e-3, rtol=1e-3)


@pytest.mark.cuda
def test_on_cuda_the_attack_trains_on_the_gpu_with_a_wall_clock_budget():
    from fmix.attacks.protectors import ProtectedPairs
    from fmix.attacks.reconstruction import AttackConfig, ReconstructionAttack

    def protector(images, labels, generator):  # an identity "protection" at 14 x 14: enough to run the networks
        x = torch.nn.functional.avg_pool2d(images / 255.0, 8)
        batch = len(images)
        return ProtectedPairs(x, torch.arange(batch)[:, None], torch.ones(batch, 1))

    faces = (torch.rand(8, 3, 112, 112) * 255).to(torch.uint8)
    attack = ReconstructionAttack(AttackConfig(batch_size=4, width=8, adv_weight=0.0)).fit(
        faces, protector, steps=2, seconds=60
    )
    assert attack.clock == "wall" and next(attack.generator.parameters()).device.type == "cuda"
    assert attack.invert(torch.rand(2, 3, 14, 14)).device.type == "cpu"


def test_the_face_detector_follows_the_device_rule():
    import onnxruntime as ort

    from fmix.data.detect import RetinaFaceDetector

    assert RetinaFaceDetector(device="cpu")._session.get_providers() == ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(
            ValueError,
            match=r"device 'cuda' asks for CUDA, but this ONNX Runtime has no CUDAExecutionProvider \(install onnxruntime-gpu\)",
        ):
            RetinaFaceDetector(device="cuda")
