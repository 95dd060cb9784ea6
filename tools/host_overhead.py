"""Host (Python) time per ``causal_conv1d_update`` call: the decode step, before and after its lean host path.

    python tools/host_overhead.py                 # CPU tensors, the GPU launch mocked out (no GPU needed)
    python tools/host_overhead.py --device cuda   # the real thing on a GPU

At Mamba's decode shape (b=4, d=2048, width 4, bf16, x a (b, d) slice of the in_proj output, as in
``archzoo/layers/mamba.py``) it times, per call:

- ``before``: the host path as it was before the launch cache reached the update (kept below, verbatim
  but for names: the old ``check_update`` with its tuple and list building, the unsqueeze / squeeze
  views, and a launch through Triton's ``JITFunction.run``);
- ``after, FAST_LAUNCH=False``: the current host path, launched through ``JITFunction.run``;
- ``after``: the current host path with the launch cache (``archzoo.kernels._launch``);
- ``check_update``, ``launch`` and the output's allocation alone, and the public dispatch's extra work
  (``use_triton``, ``record``); on CUDA also the public op, ``archzoo.kernels.causal_conv1d_update``.

On CPU (the default) Triton is not interpreted: the kernel is compiled-mode Triton, its driver is
replaced by a stub (current device 0, stream 0, an sm_90 target) and compiling yields a stand-in
whose binary launcher (``CompiledKernel.run``, C code that packs the arguments and calls
cuLaunchKernel) does nothing, while the Python around it (``JITFunction.run``, ``CompiledKernel[grid]``,
``launch_metadata``) is Triton's own. So the figures are the Python cost of a call less the binary
launcher's (about 7 us on the H100 host, the same before and after). Run it on an idle machine: the
cases take turns and the minimum over repeats is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from archzoo.kernels import _dispatch, _launch

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    raise SystemExit("unset TRITON_INTERPRET: this times compiled-mode Triton's host path")


def _stub_triton() -> None:
    """Replace Triton's driver by a stub and its compiler by a stand-in kernel whose launch does nothing."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import CompiledKernel
    from triton.runtime.driver import driver

    class StubDriver:
        def get_current_device(self):
            return 0

        def get_current_stream(self, device):
            return 0

        def get_current_target(self):
            return GPUTarget("cuda", 90, 32)

    class StandIn:  # CompiledKernel's Python launch path around a no-op binary launch
        __getitem__ = CompiledKernel.__getitem__
        launch_metadata = CompiledKernel.launch_metadata
        module, function, packed_metadata, name, src = object(), None, None, "stand_in", None

        def _init_handles(self):
            pass

        def run(self, *args):
            pass

    driver.set_active(StubDriver())
    from archzoo.kernels.causal_conv1d import triton as T

    k = T._conv_update_kernel
    k.device_caches[0]  # builds Triton's binder, which sets k.compile; replace it after
    k.compile = lambda src, target, options: StandIn()


def _before(x, conv_state, weight, bias=None, activation=None):
    """The pre-change host path of causal_conv1d_update (same kernel, same arguments)."""
    from archzoo.kernels._dispatch import check_same_device
    from archzoo.kernels.causal_conv1d import triton as T
    from archzoo.kernels.causal_conv1d._checks import _float, check_activation

    squeeze = x.dim() == 2
    x3 = x.unsqueeze(-1) if squeeze else x
    # old check_update
    if x3.dim() != 3:
        raise ValueError(f"x must have shape (b, d) or (b, d, s), got {tuple(x3.shape)}")
    _float("x", x3)
    b, d, s = x3.shape
    _float("weight", weight)
    if weight.dim() != 2 or weight.shape[0] != d:
        raise ValueError(f"weight must have shape (d, width) with d = {d}, got {tuple(weight.shape)}")
    W = weight.shape[1]
    if not 2 <= W <= 8:
        raise ValueError(f"weight width must be in 2..8, got {W}")
    if bias is not None:
        _float("bias", bias)
        if tuple(bias.shape) != (d,):
            raise ValueError(f"bias must have shape (d,) = ({d},), got {tuple(bias.shape)}")
    check_activation(activation)
    _float("conv_state", conv_state)
    if conv_state.dim() != 3 or conv_state.shape[:2] != (b, d) or conv_state.shape[2] < W - 1:
        raise ValueError(f"conv_state must have shape (b, d, state_len), got {tuple(conv_state.shape)}")
    check_same_device(x=x3, conv_state=conv_state, weight=weight, bias=bias)
    S = conv_state.shape[2]
    # old launch
    silu = check_activation(activation)
    out = torch.empty((b, d, s), device=x.device, dtype=x.dtype)
    block_d = 4 if x.device.type != "cuda" else 64
    grid = (b, T._cdiv(d, block_d))
    T._conv_update_kernel[grid](
        x3, conv_state, weight, bias if bias is not None else weight, out,
        d, S, s,
        *x3.stride(), *conv_state.stride(), *weight.stride(), *out.stride(),
        W=W, HAS_BIAS=bias is not None, SILU=silu, ACC=T._acc(x3, conv_state, weight, bias),
        BLOCK_D=block_d, BLOCK_S=T._next_pow2(S),
        num_warps=1 if x.device.type != "cuda" else 2,
    )  # fmt: skip
    return out.squeeze(-1) if squeeze else out


def _per_call_us(cases: dict, n: int, repeats: int, sync) -> dict[str, float]:
    """Per case, the minimum over repeats of the time per call of n back-to-back calls, in microseconds. The
    cases take turns within each repeat, so a change in the machine's load reaches them all alike."""
    best = dict.fromkeys(cases, float("inf"))
    for _ in range(repeats):
        for name, (fn, fast) in cases.items():
            _launch.FAST_LAUNCH = fast
            sync()
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            sync()
            best[name] = min(best[name], (time.perf_counter() - t0) / n * 1e6)
    _launch.FAST_LAUNCH = True
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--width", type=int, default=4)
    ap.add_argument("--calls", type=int, default=20000)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    args = ap.parse_args()
    if args.device == "cpu":
        _stub_triton()
    from archzoo.kernels.causal_conv1d import triton as T
    from archzoo.kernels.causal_conv1d._checks import check_update

    torch.set_num_threads(1)
    dev, b, d, W = args.device, args.batch, args.dim, args.width
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    g = torch.Generator().manual_seed(0)
    xz = torch.randn(b, 2 * d, generator=g).to(dev, torch.bfloat16)
    x = xz[:, :d]  # (b, d) slice of in_proj's output, strides (2d, 1)
    conv_state = torch.zeros(b, d, W, device=dev, dtype=torch.bfloat16)
    weight = torch.randn(d, 1, W, generator=g).to(dev, torch.bfloat16).squeeze(1)  # conv1d.weight.squeeze(1)
    bias = torch.randn(d, generator=g).to(dev, torch.bfloat16)
    call = (x, conv_state, weight, bias, "silu")

    if dev == "cuda":  # same results from both paths
        s0, s1 = conv_state.clone(), conv_state.clone()
        assert torch.equal(_before(x, s0, weight, bias, "silu"), T.causal_conv1d_update(x, s1, weight, bias, "silu"))
        assert torch.equal(s0, s1)

    # the launch alone, as causal_conv1d_update makes it
    b_, d_, s, W_, S = check_update(*call)
    out = torch.empty((b, d), device=dev, dtype=x.dtype)
    ptrs = (x, conv_state, weight, bias, out)
    ints = (d, S, s, *x.stride(), 1, *conv_state.stride(), *weight.stride(), d * s, s, 1)
    import triton.language as tl

    consts = (W, True, True, tl.float32, 64 if dev == "cuda" else 4, 1 << (S - 1).bit_length())
    grid = (b, -(-d // consts[4]), 1)
    nw = 2 if dev == "cuda" else 1

    cases = {
        "before": lambda: _before(*call),
        "after, FAST_LAUNCH=False": lambda: T.causal_conv1d_update(*call),
        "after": lambda: T.causal_conv1d_update(*call),
        "check_update alone": lambda: check_update(*call),
        "launch alone (cached)": lambda: _launch.launch(T._conv_update_kernel, grid, ptrs, ints, consts, nw, 0),
        "torch.empty alone": lambda: torch.empty((b, d), device=x.device, dtype=x.dtype),
        "dispatch: use_triton + record": lambda: (
            _dispatch.use_triton(*call[:4]),
            _dispatch.record("causal_conv1d_update", "triton"),
        ),
    }
    if dev == "cuda":
        from archzoo.kernels import causal_conv1d_update

        cases["public op (dispatch + after)"] = lambda: causal_conv1d_update(*call)
    else:  # CPU tensors take the naive path in use_triton; time its CUDA branch's calls instead
        cases["dispatch: use_triton + record"] = lambda: (
            [t for t in call[:4] if t is not None],
            _dispatch.triton_available(),
            _dispatch.check_triton_mode(cpu=False),
            _dispatch.record("causal_conv1d_update", "triton"),
        )
    cases = {name: (fn, name != "after, FAST_LAUNCH=False") for name, fn in cases.items()}
    for fn, fast in cases.values():  # warm up (and compile, or make the stand-in)
        _launch.FAST_LAUNCH = fast
        for _ in range(200):
            fn()
    res = _per_call_us(cases, args.calls, args.repeats, sync)
    for name, us in res.items():
        print(f"{us:8.2f} us/call  {name}")
    print(f"host time per call: {res['before']:.2f} -> {res['after']:.2f} us ({res['before'] / res['after']:.1f}x)")
    if args.out:
        meta = dict(device=dev, torch=torch.__version__, batch=b, dim=d, width=W, dtype="bf16")
        if dev == "cuda":
            meta["gpu"] = torch.cuda.get_device_name()
        with open(args.out, "w") as f:
            json.dump({"config": meta, "us_per_call": res}, f, indent=1)


if __name__ == "__main__":
    main()
