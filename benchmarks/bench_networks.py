"""Step time, peak memory and parameters of PlainConvUNet, ResEnc-M and XLSTMUNet built from the same plans.

The three networks get nnU-Net's topology for an isotropic patch (``get_pool_and_conv_props``, as the planners do):
PlainConvUNet with 2 convs per stage (nnU-Net default), ResEnc-M's residual blocks (1, 3, 4, 6, 6, 6), and XLSTMUNet =
ResEnc-M + 2 bidirectional mLSTM blocks in the two deepest stages. Widths 32..320. One step = forward, deep-supervision
loss, backward, SGD step; ``--precision bf16`` (default: where the device supports it, see
nunetv2_xlstm.precision) or fp32. Each network runs in its own process so that peak
memory (CUDA: max allocated; CPU: peak RSS growth over the model's own) is its own.

    python benchmarks/bench_networks.py --device cpu --patch 64 --batch 2
    python benchmarks/bench_networks.py --device cpu --patch 64 --batch 2 --precision fp32
    python benchmarks/bench_networks.py --device cuda --patch 128 --batch 2
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import resource
import statistics
import time

import torch
from torch import nn

ARMS = ("PlainConvUNet", "ResEncUNet-M", "XLSTMUNet")


def build(arm: str, patch: int, dim: int = 3) -> nn.Module:
    from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet
    from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props

    from nnunetv2_xlstm.network import XLSTMUNet

    _, strides, kernels, _, _ = get_pool_and_conv_props((1.0,) * dim, (patch,) * dim, 4, 999999)
    n = len(strides)
    common = dict(input_channels=1, n_stages=n, features_per_stage=[min(32 * 2 ** i, 320) for i in range(n)],
                  conv_op=nn.Conv3d if dim == 3 else nn.Conv2d, kernel_sizes=kernels, strides=strides, num_classes=8,
                  conv_bias=True, norm_op=nn.InstanceNorm3d if dim == 3 else nn.InstanceNorm2d,
                  norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True},
                  deep_supervision=True)
    if arm == "PlainConvUNet":
        net = PlainConvUNet(n_conv_per_stage=2, n_conv_per_stage_decoder=2, **common)
    elif arm == "ResEncUNet-M":
        net = ResidualEncoderUNet(n_blocks_per_stage=(1, 3, 4, 6, 6, 6, 6)[:n], n_conv_per_stage_decoder=1, **common)
    else:
        net = XLSTMUNet(n_blocks_per_stage=(1, 3, 4, 6, 6, 6, 6)[:n], n_conv_per_stage_decoder=1, **common)
    net.apply(net.initialize)
    return net


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(arm: str, patch: int, batch: int, device: str, steps: int, warmup: int, bf16: bool,
            queue: mp.Queue) -> None:
    torch.manual_seed(0)
    dev = torch.device(device)
    net = build(arm, patch).to(dev)
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.99, nesterov=True)
    x = torch.randn(batch, 1, *(patch,) * 3, device=dev)
    y = torch.randint(0, 8, (batch, *(patch,) * 3), device=dev)
    rss0 = _rss_mb()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(warmup + steps):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            outs = net(x)
            loss = sum(nn.functional.cross_entropy(o.float(), nn.functional.interpolate(
                y[:, None].float(), o.shape[2:], mode="nearest")[:, 0].long()) / 2 ** k for k, o in enumerate(outs))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    peak = torch.cuda.max_memory_allocated() / 2 ** 30 if dev.type == "cuda" else (_rss_mb() - rss0) / 1024
    queue.put({"arm": arm, "params_M": sum(p.numel() for p in net.parameters()) / 1e6,
               "step_ms": 1000 * statistics.median(times), "peak_GiB": peak})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--patch", type=int, default=None, help="cubic patch edge (default: 64 on CPU, 128 on CUDA)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=None, help="timed steps (default: 3 on CPU, 20 on CUDA)")
    p.add_argument("--precision", choices=["bf16", "fp32"], default=None,
                   help="default: bf16 where the device supports it (nnunetv2_xlstm.precision), else fp32")
    p.add_argument("--json", default=None, help="also write the results here")
    a = p.parse_args()
    cpu = a.device == "cpu"
    from nnunetv2_xlstm.precision import bf16_decision

    bf16 = bf16_decision(torch.device(a.device).type, {"bf16": "on", "fp32": "off", None: "auto"}[a.precision])[0]
    patch, steps = a.patch or (64 if cpu else 128), a.steps or (3 if cpu else 20)
    ctx = mp.get_context("spawn")
    rows = []
    for arm in ARMS:
        q = ctx.Queue()
        proc = ctx.Process(target=measure, args=(arm, patch, a.batch, a.device, steps, 1 if cpu else 5, bf16, q))
        proc.start()
        rows.append(q.get())
        proc.join()
    machine = torch.cuda.get_device_name() if not cpu else f"{platform.processor() or platform.machine()} CPU, " \
                                                          f"{torch.get_num_threads()} threads"
    ref = {r["arm"]: r for r in rows}
    print(f"\n{machine}; torch {torch.__version__}; patch {patch}^3, batch {a.batch}, "
          f"{'bf16 autocast' if bf16 else 'fp32'}, median of {steps} steps")
    print(f"{'network':<15}{'params (M)':>11}{'step (ms)':>11}{'peak (GiB)':>12}{'vs Plain':>10}{'vs ResEnc-M':>13}")
    for r in rows:
        print(f"{r['arm']:<15}{r['params_M']:>11.1f}{r['step_ms']:>11.0f}{r['peak_GiB']:>12.2f}"
              f"{r['step_ms'] / ref['PlainConvUNet']['step_ms']:>10.2f}"
              f"{r['step_ms'] / ref['ResEncUNet-M']['step_ms']:>13.2f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"machine": machine, "torch": torch.__version__, "patch": patch, "batch": a.batch, "bf16": bf16,
                       "results": rows}, f, indent=2)


if __name__ == "__main__":
    main()
