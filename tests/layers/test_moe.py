"""MoE FFN: routing against a per-token reference, capacity drops, statistics, losses, and the model invariant."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

import archzoo
from archzoo.config import MoEConfig
from archzoo.layers.mlp import SwiGLU
from archzoo.layers.moe import MoE

MOE_YAML = Path(__file__).resolve().parents[2] / "configs" / "models" / "moe.yaml"
D = 16


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x - ref).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt().clamp_min(1e-30)).item()


def make_moe(seed: int = 0, dtype: torch.dtype = torch.float64, **kw) -> MoE:
    args = dict(n_experts=4, top_k=2, d_ff=24, capacity_factor=None) | kw
    torch.manual_seed(seed)
    moe = MoE.from_config(MoEConfig(**args), D).to(dtype)
    with torch.no_grad():
        for p in moe.parameters():
            p.normal_(0.0, 0.3)
    return moe


def naive_moe(moe: MoE, x: torch.Tensor, keep: set[tuple[int, int]] | None = None) -> torch.Tensor:
    """Token by token, expert by expert; ``keep`` (token, expert) pairs, or all when None."""
    xf = x.reshape(-1, moe.d_model)
    out = torch.zeros_like(xf)
    for t in range(xf.shape[0]):
        probs = F.softmax(xf[t] @ moe.router.weight.t(), dim=-1)
        w, idx = probs.topk(moe.top_k)
        if moe.norm_topk_prob:
            w = w / w.sum()
        for wi, e in zip(w, idx.tolist(), strict=True):
            if keep is not None and (t, e) not in keep:
                continue
            g = moe.gate_proj.weight[e] @ xf[t]
            u = moe.up_proj.weight[e] @ xf[t]
            out[t] += wi * (moe.down_proj.weight[e] @ (F.silu(g) * u))
        for shared in moe.shared_experts:
            out[t] += shared(xf[t])
    return out.reshape(x.shape)


@pytest.mark.parametrize("norm_topk_prob", [True, False])
@pytest.mark.parametrize("top_k", [1, 2, 3])
@pytest.mark.parametrize("training", [True, False])
def test_dropless_matches_naive(top_k, norm_topk_prob, training):
    moe = make_moe(top_k=top_k, norm_topk_prob=norm_topk_prob).train(training)
    x = torch.randn(2, 7, D, dtype=torch.float64)
    out = moe(x)
    assert out.shape == x.shape
    assert rel_err(out, naive_moe(moe, x)) < 1e-12, "out"
    assert moe.last_stats["tokens_dropped"].item() == 0
    assert moe.last_stats["load"].sum().item() == 14 * top_k


def test_dropless_gradients_match_naive():
    moe = make_moe()
    x = torch.randn(3, 5, D, dtype=torch.float64, requires_grad=True)
    g = torch.randn(3, 5, D, dtype=torch.float64)
    (moe(x) * g).sum().backward()
    grads = {n: p.grad.clone() for n, p in moe.named_parameters()}
    gx = x.grad.clone()
    moe.zero_grad()
    x.grad = None
    (naive_moe(moe, x) * g).sum().backward()
    assert rel_err(gx, x.grad) < 1e-12, "grad x"
    for n, p in moe.named_parameters():
        assert rel_err(grads[n], p.grad) < 1e-12, f"grad {n}"


def test_tight_capacity_drops_in_training_only_unless_asked():
    x = torch.randn(4, 16, D, dtype=torch.float64)
    dropless = make_moe(capacity_factor=None).train()
    ref = naive_moe(dropless, x)
    assert rel_err(dropless(x), ref) < 1e-12, "dropless out (training)"
    assert dropless.last_stats["tokens_dropped"].item() == 0

    tight = make_moe(capacity_factor=0.25).train()  # same seed: same weights as `dropless`
    out = tight(x)
    stats = tight.last_stats
    cap = -(-64 * 2 * 25 // (4 * 100))  # ceil(64 * 2 / 4 * 0.25) = 8
    assert stats["capacity"] == cap
    assert stats["tokens_dropped"].item() == (stats["load"] - stats["load"].clamp(max=cap)).sum().item() > 0
    assert stats["drop_fraction"].item() == pytest.approx(stats["tokens_dropped"].item() / 128)
    assert rel_err(out, ref) > 0.1, "capacity changed nothing"

    tight.eval()  # inference is dropless by default
    assert rel_err(tight(x), ref) < 1e-12, "out (eval, capacity_at_inference=False)"
    assert tight.last_stats["tokens_dropped"].item() == 0 and tight.last_stats["capacity"] is None

    asked = make_moe(capacity_factor=0.25, capacity_at_inference=True).eval()
    assert rel_err(asked(x), out) < 1e-12, "out (eval, capacity_at_inference=True)"
    assert asked.last_stats["tokens_dropped"].item() == stats["tokens_dropped"].item()


def test_capacity_keeps_first_in_priority_order():
    """The kept assignments are, per expert, the first `capacity` in (choice, token) order."""
    moe = make_moe(capacity_factor=0.5).train()
    x = torch.randn(3, 10, D, dtype=torch.float64)
    out = moe(x)
    top_e = (x.reshape(-1, D) @ moe.router.weight.t()).topk(2, dim=-1).indices  # (N, K)
    cap, used, keep = moe.last_stats["capacity"], [0] * 4, set()
    for k in range(2):
        for t in range(30):
            e = top_e[t, k].item()
            if used[e] < cap:
                keep.add((t, e))
                used[e] += 1
    assert moe.last_stats["tokens_dropped"].item() == 60 - len(keep) > 0
    assert rel_err(out, naive_moe(moe, x, keep)) < 1e-12, "out with drops"


def test_stats_on_hand_built_routing():
    """Router = identity, x = 10 * first choice + 5 * second choice: every assignment is known."""
    moe = MoE(4, n_experts=4, d_ff=8, top_k=2, capacity_factor=0.5).double().train()  # capacity ceil(4*2/4*.5) = 1
    with torch.no_grad():
        moe.router.weight.copy_(torch.eye(4))
    choices = [(0, 1), (1, 0), (0, 2), (3, 2)]
    x = torch.zeros(1, 4, 4, dtype=torch.float64)
    for t, (a, b) in enumerate(choices):
        x[0, t, a], x[0, t, b] = 10.0, 5.0
    out = moe(x)
    # First choices go first: t0->0, t1->1, t3->3 fit, t2->0 is over. Then second choices: t0->1 and
    # t1->0 are over (the first choices took them although t0, t1 come first), t2->2 fits, t3->2 is over.
    keep = {(0, 0), (1, 1), (3, 3), (2, 2)}
    s = moe.last_stats
    assert s["capacity"] == 1
    assert s["load"].tolist() == [3, 2, 2, 1]
    assert s["tokens_dropped"].item() == 4 and s["tokens_dropped"].dtype == torch.int64
    assert s["drop_fraction"].item() == pytest.approx(0.5)
    assert rel_err(out, naive_moe(moe, x, keep)) < 1e-12, "out with hand-built drops"

    moe.capacity_factor = 1.0  # capacity 2; per expert in priority order e0: t0, t2, t1 (over); e1: t1, t0; ...
    moe(x)
    assert moe.last_stats["tokens_dropped"].item() == 1


def _hand_losses(moe: MoE, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logits = x.reshape(-1, D) @ moe.router.weight.t()  # (N, E)
    probs = logits.softmax(-1)
    n, e = probs.shape
    counts = F.one_hot(probs.topk(moe.top_k, dim=-1).indices, e).sum(dim=(0, 1))  # (E,)
    f = counts.to(probs.dtype) / (n * moe.top_k)
    balance = moe.aux_loss_coef * e * (f * probs.mean(0)).sum()
    z = moe.z_loss_coef * (torch.logsumexp(logits, -1) ** 2).mean()
    return balance, z


@pytest.mark.parametrize("capacity_factor", [None, 0.25])
def test_losses_match_formulas_and_reach_router(capacity_factor):
    moe = make_moe(aux_loss_coef=0.1, z_loss_coef=0.01, capacity_factor=capacity_factor).train()
    x = torch.randn(2, 9, D, dtype=torch.float64)
    moe(x)
    balance, z = _hand_losses(moe, x)
    assert rel_err(moe.last_stats["balance_loss"], balance) < 1e-12, "balance_loss"
    assert rel_err(moe.last_stats["z_loss"], z) < 1e-12, "z_loss"
    assert rel_err(moe.aux_loss, balance + z) < 1e-12, "aux_loss"
    for coefs in [(0.1, 0.0), (0.0, 0.01)]:  # each loss alone carries gradient to the router
        moe.aux_loss_coef, moe.z_loss_coef = coefs
        moe.zero_grad()
        moe(x)
        moe.aux_loss.backward()
        assert moe.router.weight.grad is not None and moe.router.weight.grad.abs().sum() > 0, f"coefs {coefs}"
        assert moe.gate_proj.weight.grad is None


def test_shared_experts_add():
    x = torch.randn(2, 6, D, dtype=torch.float64)
    routed = make_moe(seed=3)
    both = make_moe(seed=3, n_shared_experts=2)
    both.load_state_dict(routed.state_dict(), strict=False)
    assert isinstance(both.shared_experts[0], SwiGLU) and len(both.shared_experts) == 2
    shared = sum(s(x) for s in both.shared_experts)
    assert rel_err(both(x), routed(x) + shared) < 1e-12, "out with shared experts"
    assert rel_err(both(x), naive_moe(both, x)) < 1e-12, "out with shared experts vs naive"


def test_upcycled_experts_equal_the_dense_mlp():
    """Copying a SwiGLU into every expert gives the SwiGLU back (top-k probs renormalised)."""
    moe = make_moe()
    mlp = SwiGLU(D, 24).double()
    with torch.no_grad():
        for name in ("gate_proj", "up_proj", "down_proj"):
            getattr(moe, name).weight.copy_(getattr(mlp, name).weight.expand_as(getattr(moe, name).weight))
    x = torch.randn(2, 5, D, dtype=torch.float64)
    assert rel_err(moe(x), mlp(x)) < 1e-12, "upcycled out"


def test_bad_arguments():
    with pytest.raises(ValueError, match="top_k"):
        MoE(D, n_experts=2, d_ff=8, top_k=3)
    with pytest.raises(ValueError, match="capacity_factor"):
        MoE(D, n_experts=2, d_ff=8, capacity_factor=0.0)
    with pytest.raises(ValueError, match="d_model"):
        MoE(D, n_experts=2, d_ff=8)(torch.randn(2, 3, D + 1))
    with pytest.raises(archzoo.ConfigError, match="ffn.top_k"):
        cfg = yaml.safe_load(MOE_YAML.read_text())
        cfg["ffn"]["top_k"] = 9
        archzoo.load_config(cfg)


def _moe_model(**overrides) -> archzoo.ArchZooLM:
    cfg = yaml.safe_load(MOE_YAML.read_text()) | {"init_std": 0.2} | overrides
    torch.manual_seed(0)
    return archzoo.build_model(cfg).double()


def test_model_aux_loss_sums_layers():
    model = _moe_model().train()
    ids = torch.randint(0, 512, (2, 12))
    model(ids)
    moes = [b.ffn for b in model.blocks]
    assert all(isinstance(m, MoE) for m in moes) and len(moes) == 4
    total = sum(m.aux_loss for m in moes)
    assert rel_err(model.aux_loss, total.float()) < 1e-6, "model.aux_loss"  # the model sums in fp32
    model.aux_loss.backward()
    assert all(m.router.weight.grad.abs().sum() > 0 for m in moes)


def test_model_invariant_full_equals_prefill_plus_decode(monkeypatch):
    model = _moe_model().eval()
    ids = torch.randint(0, 512, (2, 9))
    with torch.no_grad():
        monkeypatch.setattr(MoE, "STATIC_MAX_TOKENS", 0)  # the full forward dispatches by sorting ...
        full = model(ids)
        stats = model.blocks[0].ffn.last_stats
        monkeypatch.undo()  # ... the steps take the static decode path (gathered or dense experts)
        for splits in ([9], [4, 1, 3, 1], [1] * 9):
            cache = model.new_cache(2, 12)
            parts, t = [], 0
            for n in splits:
                parts.append(model(ids[:, t : t + n], cache=cache))
                t += n
            assert rel_err(torch.cat(parts, dim=1), full) < 1e-12, f"logits, splits {splits}"
    assert stats["tokens_dropped"].item() == 0


def test_yaml_is_the_tiny_config():
    cfg = archzoo.load_config(MOE_YAML)
    assert (cfg.vocab_size, cfg.d_model, cfg.n_layers) == (512, 128, 4)
    assert (cfg.mixer.type, cfg.mixer.n_heads, cfg.mixer.n_kv_heads) == ("attention", 4, 2)
    f = cfg.ffn
    assert (f.type, f.n_experts, f.top_k, f.d_ff, f.capacity_factor, f.n_shared_experts) == ("moe", 8, 2, 128, 1.25, 0)


@pytest.mark.parametrize("top_k", [1, 2, 3, 4])
def test_static_decode_path_matches_naive(top_k):
    """No gradients, few tokens: the static path (top-k by max reductions, gathered experts) gives the naive sums."""
    from archzoo.layers.moe import topk_by_max

    moe = make_moe(top_k=top_k).eval()
    for n in (1, 3, 40):  # gathered experts (N K < E) and every expert with a dense gate
        x = torch.randn(n, 1, D, dtype=torch.float64)
        with torch.no_grad():
            assert rel_err(moe(x), naive_moe(moe, x)) < 1e-12, f"{n} tokens, top-{top_k}"
    probs = torch.randn(9, 8, dtype=torch.float64).softmax(-1)
    v, i = topk_by_max(probs, top_k)
    ref_v, ref_i = probs.topk(top_k, dim=-1)
    assert torch.equal(i, ref_i) and torch.equal(v, ref_v)
