"""The distillation loss's three forms side by side in one process (issue 16, item 5: the fused KL lever).

    python tools/bench_kd_loss.py --out kd_loss.json            # GPU: N=8192 tokens, d=576, V=49152, bf16
    python tools/bench_kd_loss.py --tokens 64 --vocab 300 --d 16 --out smoke.json   # CPU smoke (times mean nothing)

Forward+backward of the KD loss from final hidden states and LM heads (student and teacher both of the
teacher's shape, bf16 tensors, no autocast), the student's hidden states and head needing gradients:

- ``unfused``: ``train.losses.distill_loss`` (token chunks under checkpointing: fp32 logits, log_softmax and
  the divergence's terms in PyTorch, the logits rebuilt in the backward pass);
- ``fused``: ``train.losses.fused_distill_loss`` (``archzoo.kernels.kd_loss_rows``: the Triton kernel on CUDA,
  the gradient made in the forward pass);
- ``liger``: Liger-Kernel's ``LigerFusedLinearJSD`` at beta 0 (its forward KL), when installed: the public
  peer, KL only (it has no cross-entropy), so its row is compared with ours at ``ce_weight`` 0;

each with the CE at weight 0 and at 0.5 where it has one. Reported per row: ms (median of
``triton.testing.do_bench`` on CUDA, of a few wall-clock runs on CPU), the peak extra MiB of one call, the
loss value and the gradients' relative error against ``unfused``, and the LM-head matmuls' share of the dense
bf16 peak (2 N d V FLOPs per matmul: the student's forward and two backward, the teacher's forward; the
unfused form's rebuilt logits are not counted).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from archzoo.kernels import last_backend
from archzoo.train.losses import distill_loss, fused_distill_loss

PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12}  # dense, SXM


def _liger():
    try:
        from liger_kernel.transformers.fused_linear_jsd import LigerFusedLinearJSD
    except Exception as e:  # not installed, or broken against this torch / triton
        return f"not installed ({type(e).__name__}: {str(e)[:120]})"
    return LigerFusedLinearJSD(jsd_beta=0.0, temperature=1.0)


def _time(fn, device: str) -> float:
    if device == "cuda":
        import triton

        return triton.testing.do_bench(fn, warmup=5, rep=50, return_mode="median")
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _peak_mib(fn, device: str) -> float | None:
    if device != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=8192, help="N: micro-batch x block length (16 x 512)")
    p.add_argument("--d", type=int, default=576)
    p.add_argument("--vocab", type=int, default=49152)
    p.add_argument("--token-chunk", type=int, default=1024)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    N, d, V = args.tokens, args.d, args.vocab
    g = torch.Generator(device=device).manual_seed(0)
    r = lambda *s: torch.randn(*s, device=device, generator=g)  # noqa: E731
    dt = torch.bfloat16
    h_s = (r(N, d)).to(dt).requires_grad_()
    w_s = (r(V, d) / d**0.5).to(dt).requires_grad_()
    h_t, w_t = r(N, d).to(dt), (r(V, d) / d**0.5).to(dt)
    targets = torch.randint(0, V, (N,), device=device, generator=g)
    leaves = (h_s, w_s)
    chunk = args.token_chunk

    def unfused(ce_w: float):
        out = distill_loss(h_s, w_s, h_t, w_t, targets, token_chunk=chunk)
        return out.kl + ce_w * out.ce

    def fused(ce_w: float):
        return fused_distill_loss(h_s, w_s, h_t, w_t, targets, ce_weight=ce_w, token_chunk=chunk).loss

    liger = _liger()
    impls = {
        "unfused_kl": lambda: unfused(0.0),
        "fused_kl": lambda: fused(0.0),
        "unfused_kl_ce": lambda: unfused(0.5),
        "fused_kl_ce": lambda: fused(0.5),
        "liger_kl": liger if isinstance(liger, str) else (lambda: liger(h_s, w_s, h_t, w_t, None)),
    }
    flops = 4 * 2 * N * d * V  # student forward + two backward matmuls, teacher forward
    name = torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu"
    peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
    rows: dict[str, dict] = {}
    grads: dict[str, tuple] = {}
    for key, fn in impls.items():
        if isinstance(fn, str):
            rows[key] = {"status": fn}
            continue

        def step(fn=fn):
            for t in leaves:
                t.grad = None
            loss = fn()
            loss.backward()
            return loss

        try:
            loss = step()
        except Exception as e:  # a peer whose API differs: report it, go on
            rows[key] = {"status": f"error ({type(e).__name__}: {str(e)[:160]})"}
            continue
        grads[key] = tuple(t.grad.detach().clone() for t in leaves)
        row = rows[key] = {"status": "ok", "loss": float(loss)}
        if key.startswith("fused"):
            row["backend"] = last_backend("kd_loss_rows")
        row["peak_mib"] = _peak_mib(step, device)
        row["ms"] = _time(step, device)
        if peak:
            row["bf16_peak_fraction"] = flops / (row["ms"] / 1e3) / peak
        print(json.dumps({key: row}), flush=True)
    for key, row in rows.items():
        ref = "unfused_kl_ce" if key.endswith("kl_ce") else "unfused_kl"
        if row.get("status") == "ok" and key != ref and ref in grads:
            row["grad_rel_err_vs_unfused"] = [_rel(a, b) for a, b in zip(grads[key], grads[ref], strict=True)]
            row["speedup_vs_unfused"] = rows[ref]["ms"] / row["ms"]
            if key == "fused_kl" and rows.get("liger_kl", {}).get("status") == "ok":
                row["speedup_vs_liger"] = rows["liger_kl"]["ms"] / row["ms"]
    result = {
        "device": name,
        "torch": torch.__version__,
        "shape": dict(tokens=N, d=d, vocab=V, token_chunk=chunk, dtype="bfloat16"),
        "rows": rows,
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    for key, row in rows.items():
        if row.get("status") != "ok":
            print(f"| {key} | {row['status']} |")
            continue
        extra = ", ".join(f"{k} {v:.2f}x" for k, v in row.items() if k.startswith("speedup"))
        peak_s = f", peak {row['peak_mib']:.0f} MiB" if row.get("peak_mib") is not None else ""
        print(f"| {key} | {row['ms']:.3f} ms{peak_s}; loss {row['loss']:.4f}" + (f"; {extra}" if extra else "") + " |")


if __name__ == "__main__":
    main()
