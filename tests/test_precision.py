"""bf16 mixed precision: the decision per device and setting, and the forward wrapper nnU-Net's steps run through."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nnunetv2_xlstm import precision
from nnunetv2_xlstm.precision import ENV, PrecisionError, autocast_forward, bf16_decision
from nnunetv2_xlstm.training.lr_schedule import WarmupPolyLR


@pytest.fixture
def cpu_feature(monkeypatch: pytest.MonkeyPatch):
    """Set what the CPU reports (a feature name or None) and clear the cached decisions."""

    def set_feature(feature: str | None) -> None:
        monkeypatch.setattr(precision, "cpu_bf16_support", lambda: feature)
        precision._decide.cache_clear()

    monkeypatch.delenv(ENV, raising=False)
    yield set_feature
    precision._decide.cache_clear()


def test_decision_follows_the_cpu_and_the_setting(cpu_feature, monkeypatch: pytest.MonkeyPatch) -> None:
    cpu_feature("avx512_bf16")
    assert bf16_decision("cpu") == (True, "bf16 autocast on the CPU (avx512_bf16)")
    assert bf16_decision("cpu", "off")[0] is False  # a trainer's bf16 = "off"
    monkeypatch.setenv(ENV, "0")
    assert bf16_decision("cpu", "on")[0] is False  # the variable wins over the trainer's attribute

    cpu_feature(None)
    monkeypatch.delenv(ENV)
    enabled, why = bf16_decision("cpu")
    assert not enabled and "neither AMX-BF16 nor AVX512-BF16" in why  # a logged fallback
    monkeypatch.setenv(ENV, "1")
    with pytest.raises(PrecisionError, match="asks for bf16, but this CPU has neither"):
        bf16_decision("cpu")
    monkeypatch.setenv(ENV, "fast")
    with pytest.raises(PrecisionError, match="'fast' is not a precision setting"):
        bf16_decision("cpu")


def test_no_gpu_means_no_cuda_bf16(cpu_feature, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bf16_decision("cuda") == (False, "this GPU has no bf16: nnU-Net's fp16 autocast")
    monkeypatch.setenv(ENV, "on")
    with pytest.raises(PrecisionError, match="set NNUNETV2_XLSTM_BF16=0 for fp16"):
        bf16_decision("cuda")


class DeepSupervised(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(1, 4, 3, padding=1)
        self.head = nn.Conv3d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        y = self.head(self.conv(x))
        return [y, y[:, :, ::2, ::2, ::2]]


def _conv_dtypes(net: DeepSupervised) -> list[torch.dtype]:
    seen = []
    net.conv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    return seen


@pytest.mark.parametrize("outer", [None, torch.float16])
def test_wrapped_forward_runs_bf16_and_returns_fp32(cpu_feature, outer: torch.dtype | None) -> None:
    """The network's convs run in bf16 and its outputs come back in fp32, also inside nnU-Net's own fp16 autocast
    (``outer``: what nnU-Net's train_step does on CUDA, here on the CPU)."""
    cpu_feature("avx512_bf16")
    net = autocast_forward(DeepSupervised())
    seen = _conv_dtypes(net)
    x = torch.randn(2, 1, 8, 8, 8)
    with torch.autocast("cpu", dtype=outer, enabled=outer is not None):
        out = net(x)
        loss = sum(o.square().mean() for o in out)
    loss.backward()
    assert seen == [torch.bfloat16]
    assert isinstance(out, list) and [o.dtype for o in out] == [torch.float32, torch.float32]
    assert net.conv.weight.grad is not None and net.conv.weight.grad.dtype == torch.float32
    assert set(net.state_dict()) == set(DeepSupervised().state_dict())  # checkpoints keep their keys


def test_a_deep_copy_runs_its_own_weights(cpu_feature) -> None:
    """An EMA teacher is a deepcopy of the student: its forward must use the copy's weights, not the student's."""
    import copy

    cpu_feature("avx512_bf16")
    student = autocast_forward(DeepSupervised())
    teacher = copy.deepcopy(student)
    with torch.no_grad():
        teacher.head.bias.add_(10.0)
    x = torch.randn(1, 1, 8, 8, 8)
    assert (teacher(x)[0] - student(x)[0]).mean().item() == pytest.approx(10.0, abs=0.1)
    assert teacher.forward.module is teacher and student.forward.module is student


def test_wrapped_forward_stays_fp32_when_off(cpu_feature, monkeypatch: pytest.MonkeyPatch) -> None:
    cpu_feature("avx512_bf16")
    net = autocast_forward(DeepSupervised(), "off")
    seen = _conv_dtypes(net)
    reference = DeepSupervised()
    reference.load_state_dict(net.state_dict())
    x = torch.randn(1, 1, 8, 8, 8)
    assert torch.equal(net(x)[0], reference(x)[0]) and seen == [torch.float32]


def test_trainers_build_bf16_networks(cpu_feature) -> None:
    """The trainers build the plans' network with its forward in bf16 (nnUNetv2_predict rebuilds it through the same
    classmethod): outputs in fp32, within bf16's tolerance of the fp32 network with the same weights, not equal."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunetv2_xlstm.training import xlstm as trainers

    kwargs = {"n_stages": 3, "features_per_stage": [8, 16, 32], "conv_op": "torch.nn.modules.conv.Conv3d",
              "kernel_sizes": [[3, 3, 3]] * 3, "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]],
              "n_blocks_per_stage": [1, 1, 1], "n_conv_per_stage_decoder": [1, 1], "conv_bias": True,
              "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d", "norm_op_kwargs": {"eps": 1e-5, "affine": True},
              "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
              "nonlin_kwargs": {"inplace": True}, "mlstm_stages": [2], "mlstm_blocks_per_stage": 2}
    plans = PlansManager({"dataset_name": "Dataset999_X", "plans_name": "nnUNetPlansXLSTM", "configurations": {
        "3d_fullres": {"architecture": {"network_class_name": "nnunetv2_xlstm.network.xlstm_unet.XLSTMUNet",
                                        "arch_kwargs": kwargs, "_kw_requires_import": ["conv_op", "norm_op",
                                                                                       "dropout_op", "nonlin"]}}}})
    build = lambda: trainers.nnUNetTrainerXLSTM.build_network_architecture(
        plans, plans.get_configuration("3d_fullres"), 1, 3, False)
    x = torch.randn(1, 1, 8, 16, 16)
    cpu_feature("avx512_bf16")
    torch.manual_seed(0)
    bf16_net = build()
    cpu_feature(None)
    fp32_net = build()
    fp32_net.load_state_dict(bf16_net.state_dict())
    with torch.no_grad():
        cpu_feature("avx512_bf16")
        low = bf16_net(x)
        cpu_feature(None)
        full = fp32_net(x)
    assert low.dtype == full.dtype == torch.float32
    assert not torch.equal(low, full)  # bf16 did run
    assert torch.allclose(low, full, atol=0.05 * float(full.abs().max()), rtol=0.05)


def test_time_fraction_drives_the_poly_schedule() -> None:
    """With a time budget, the epoch the schedule sees is the spent share of the budget times the epoch cap."""
    spent = {"fraction": 0.0}
    optimizer = torch.optim.SGD([{"params": [nn.Parameter(torch.zeros(1))], "name": "decoder"}], lr=1.0)
    schedule = WarmupPolyLR(optimizer, 1.0, 100, warmup=10, progress=lambda: spent["fraction"] * 100)
    lrs = []
    for fraction in (0.0, 0.05, 0.55, 1.0, 1.2):
        spent["fraction"] = fraction
        schedule.step(7)  # nnU-Net's epoch is ignored
        lrs.append(optimizer.param_groups[0]["lr"])
    assert lrs == pytest.approx([0.1, 0.6, 0.5 ** 0.9, 0.0, 0.0])
