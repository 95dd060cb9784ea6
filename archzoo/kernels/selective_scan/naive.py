"""Plain PyTorch reference of the selective scan (Mamba, Gu & Dao 2023, arXiv:2312.00752, Alg. 2).

Same signatures as ``triton.py`` and as mamba_ssm's ``selective_scan_fn`` /
``selective_state_update``. Computes in float32 (float64 when an input is float64) with a
Python loop over time; autograd supplies the gradients. Used as the CPU path and as the oracle
the Triton kernels are tested against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._checks import check_scan, check_update, compute_dtype


def _step_bc(t: torch.Tensor, b: int, d: int, dtype: torch.dtype) -> torch.Tensor:
    """B / C of a decode step, (b, n) or grouped (b, g, n) -> (b, d, n), per channel."""
    t = t.to(dtype)
    if t.dim() == 2:  # (b, n): shared by every channel
        return t.unsqueeze(1).expand(b, d, t.shape[1])
    g = t.shape[1]  # (b, g, n): channel c reads group c // (d / g)
    return t.repeat_interleave(d // g, dim=1)


def _time_major_bc(t: torch.Tensor, d: int, length: int, dtype: torch.dtype) -> torch.Tensor:
    """B / C of a scan -> (l, b, d, n), or (l, 1, d, n) / (l, b, 1, n) that broadcast to it; n contiguous."""
    t = t.to(dtype)
    if t.dim() == 2:  # (d, n): input-independent
        return t[None, None].expand(length, 1, *t.shape)
    if t.dim() == 3:  # (b, n, l): shared by every channel
        return t.permute(2, 0, 1).contiguous().unsqueeze(2)
    g = t.shape[1]  # (b, g, n, l): channel c reads group c // (d / g)
    return t.permute(3, 0, 1, 2).contiguous().repeat_interleave(d // g, dim=2)


def naive_selective_scan_fn(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    initial_state: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Selective scan, reference version.

    u, delta, z (b, d, l); A (d, n); B, C (d, n), (b, n, l) or (b, g, n, l); D, delta_bias (d,);
    initial_state (b, d, n). dt = softplus?(delta + delta_bias); h_t = exp(dt A) h_{t-1} + dt B_t u_t;
    y_t = <C_t, h_t> + D u_t; out = y * silu(z). Returns out (b, d, l) in u's dtype, and with
    ``return_last_state`` also h_l (b, d, n) in float32 (float64 for float64 inputs).
    """
    b, d, length, n = check_scan(u, delta, A, B, C, D, z, delta_bias, initial_state)
    cdt = compute_dtype(u, delta, A, B, C, D, z, delta_bias, initial_state)
    uf, dt = u.to(cdt), delta.to(cdt)
    if delta_bias is not None:
        dt = dt + delta_bias.to(cdt)[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    # time-major (l, b, d, n), so each step reads contiguous slices; unbind rather than index, so autograd
    # stacks the per-step gradients once (indexing fills a zero (b, d, n, l) tensor per step and input)
    Bx = _time_major_bc(B, d, length, cdt)  # (l, b, d or 1, n)
    Cx = _time_major_bc(C, d, length, cdt)
    dtT = dt.permute(2, 0, 1)  # (l, b, d)
    dA = torch.exp(dtT[..., None] * A.to(cdt))  # (l, b, d, n)
    dBu = (dtT * uf.permute(2, 0, 1))[..., None] * Bx  # (l, b, d, n)
    h = u.new_zeros(b, d, n, dtype=cdt) if initial_state is None else initial_state.to(cdt)
    ys = []
    for dA_t, dBu_t, C_t in zip(dA.unbind(0), dBu.unbind(0), Cx.unbind(0), strict=True):
        h = dA_t * h + dBu_t
        ys.append((h * C_t).sum(-1))  # (b, d)
    y = torch.stack(ys, dim=-1) if ys else uf.new_zeros(b, d, 0)  # (b, d, l)
    if D is not None:
        y = y + D.to(cdt)[:, None] * uf
    if z is not None:
        y = y * F.silu(z.to(cdt))
    out = y.to(u.dtype)
    return (out, h) if return_last_state else out


def naive_selective_state_update(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
) -> torch.Tensor:
    """One decode step of the selective scan; ``state`` (b, d, n) is updated IN PLACE.

    x, dt, z (b, d); A (d, n); B, C (b, n) or grouped (b, g, n); D, dt_bias (d,). Returns out (b, d)
    in x's dtype. Same recurrence as ``naive_selective_scan_fn`` for one time step.
    """
    b, d, n = check_update(state, x, dt, A, B, C, D, z, dt_bias)
    cdt = compute_dtype(state, x, dt, A, B, C, D, z, dt_bias)
    xf, dtf = x.to(cdt), dt.to(cdt)
    if dt_bias is not None:
        dtf = dtf + dt_bias.to(cdt)
    if dt_softplus:
        dtf = F.softplus(dtf)
    Bx = _step_bc(B, b, d, cdt)  # (b, d, n)
    Cx = _step_bc(C, b, d, cdt)  # (b, d, n)
    h = torch.exp(dtf[..., None] * A.to(cdt)) * state.to(cdt) + (dtf * xf)[..., None] * Bx
    state.copy_(h)
    y = (h * Cx).sum(-1)  # (b, d)
    if D is not None:
        y = y + D.to(cdt) * xf
    if z is not None:
        y = y * F.silu(z.to(cdt))
    return y.to(x.dtype)
