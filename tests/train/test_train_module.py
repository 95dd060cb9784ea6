"""DistillModule pieces without a Trainer: align targets and gradients, KD step, schedules, stage freezing."""

from __future__ import annotations

import math

import pytest
import torch

import archzoo
from archzoo.layers import ForwardContext
from archzoo.train.config import load_run_config
from archzoo.train.evaluation import evaluate
from archzoo.train.forward import final_hidden, teacher_mixer_io
from archzoo.train.losses import align_loss, token_divergence
from archzoo.train.module import DistillModule, lr_factor

from conftest import assert_close

TEACHER = {
    "vocab_size": 64,
    "d_model": 32,
    "n_layers": 3,
    "mixer": {"type": "attention", "n_heads": 4, "n_kv_heads": 2},
    "ffn": {"type": "swiglu", "d_ff": 64},
    "init_std": 0.2,
}
STUDENT = {**TEACHER, "n_layers": 2, "mixer": {"type": "attention", "n_heads": 4, "n_kv_heads": 1}}


def _run(stages, student=None, **extra):
    return load_run_config(
        {
            "teacher": "unused",
            "student": {"config": student or STUDENT, "init": "random", **extra},
            "data": {"source": "random", "block_len": 8},
            "stages": stages,
        }
    )


def _models(student=None, seed=0):
    torch.manual_seed(seed)
    teacher = archzoo.build_model(TEACHER).double()
    student = archzoo.build_model(student or STUDENT).double()
    return teacher, student


def test_teacher_mixer_io_are_the_mixer_norm_output_and_mixer_output():
    teacher, _ = _models()
    ids = torch.randint(64, (2, 9))
    io = teacher_mixer_io(teacher, ids, [0, 2])
    x = teacher.embed(ids)
    ctx = ForwardContext()
    for k, block in enumerate(teacher.blocks):
        inp = block.mixer_norm(x)
        out = block.mixer(inp, None, ctx)
        if k in io:
            assert_close(f"layer {k} mixer input", io[k][0], inp, 1e-12)
            assert_close(f"layer {k} mixer output", io[k][1], out, 1e-12)
        x = block(x, None, ForwardContext())
    assert set(io) == {0, 2}


def test_align_step_targets_teacher_mixers_and_only_trains_aligned_mixers():
    teacher, student = _models()
    # Student layer 0 <- teacher layer 0, student layer 1 <- teacher layer 2; align only layer 1.
    run = _run([{"name": "a", "type": "align", "steps": 1, "layers": [1]}], teacher_layers=[0, 2])
    module = DistillModule(run, teacher, student)
    module._enter_stage(0)
    ids = torch.randint(64, (2, 9))
    loss, parts = module.align_step(ids, [1])

    # Manual: run the teacher to layer 2, take its mixer's input and output there.
    x = teacher.embed(ids)
    for block in teacher.blocks[:2]:
        x = block(x, None, ForwardContext())
    inp = teacher.blocks[2].mixer_norm(x)
    target = teacher.blocks[2].mixer(inp, None, ForwardContext())
    want = align_loss(student.blocks[1].mixer(inp, None, ForwardContext()), target)
    assert_close("align loss", loss, want, 1e-12)
    assert parts["align"].item() == pytest.approx(loss.item())

    loss.backward()
    for name, p in student.named_parameters():
        if name.startswith("blocks.1.mixer."):
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{name}: aligned mixer got no gradient"
        else:
            assert p.grad is None, f"{name}: got a gradient but is not an aligned mixer"
    assert all(p.grad is None for p in teacher.parameters()), "the teacher must get no gradient"
    # The stage's trainable globs froze everything but the mixers.
    for name, p in student.named_parameters():
        assert p.requires_grad == (".mixer." in name), f"{name}: requires_grad={p.requires_grad}"


def test_align_runs_a_cla_leader_for_its_member():
    cla = {**TEACHER, "mixer": {"type": "attention", "n_heads": 4, "n_kv_heads": 2, "cla_group": 3}}
    teacher, student = _models(student=cla)
    run = _run([{"name": "a", "type": "align", "steps": 1, "layers": [2]}], student=cla)
    loss, _ = DistillModule(run, teacher, student).align_step(torch.randint(64, (2, 7)), [2])
    loss.backward()
    assert student.blocks[0].mixer.k_proj.weight.grad is not None, "the member's loss reaches the leader's K/V"
    assert student.blocks[0].mixer.q_proj.weight.grad is None, "the leader's own output is not a target"


def test_align_with_fewer_student_layers_needs_a_layer_map():
    teacher, student = _models()
    run = _run([{"name": "a", "type": "align", "steps": 1}])
    with pytest.raises(archzoo.ConfigError, match="student.teacher_layers: .*list the teacher layer"):
        DistillModule(run, teacher, student)


def test_kd_step_is_kl_plus_weighted_ce_and_aux():
    moe = {**STUDENT, "ffn": {"type": "moe", "n_experts": 4, "top_k": 2, "d_ff": 32}}
    teacher, student = _models(student=moe)
    stage = {"name": "kd", "type": "kd", "steps": 1, "temperature": 2.0, "ce_weight": 0.3, "aux_weight": 0.5}
    run = _run([stage], student=moe)
    module = DistillModule(run, teacher, student)
    rows = torch.randint(64, (2, 10))
    ids, tgt = rows[:, :-1], rows[:, 1:]
    loss, parts = module.kd_step(ids, tgt, run.stages[0])
    zs, zt = student(ids), teacher(ids)
    kl = token_divergence(zs, zt, "forward", 2.0).mean()
    ce = torch.nn.functional.cross_entropy(zs.flatten(0, 1), tgt.flatten())
    aux = student.aux_loss
    assert aux.item() > 0, "the MoE student should report an aux loss"
    assert_close("kl", parts["kl"], kl, 1e-10)
    assert_close("ce", parts["ce"], ce, 1e-10)
    assert_close("kd loss", loss, kl + 0.3 * ce + 0.5 * aux, 1e-10)
    no_ce = _run([{**stage, "ce_weight": 0.0}], student=moe).stages[0]
    loss, parts = module.kd_step(ids, tgt, no_ce)
    assert_close("kd loss without CE", loss, kl + 0.5 * aux, 1e-10)
    assert_close("CE is still reported", parts["ce"], ce, 1e-10)


def test_final_hidden_matches_the_model_forward():
    teacher, _ = _models()
    ids = torch.randint(64, (2, 5))
    assert_close("logits", teacher.lm_head(final_hidden(teacher, ids)), teacher(ids), 1e-12)


def test_trainable_globs_and_stage_switching():
    teacher, student = _models()
    stages = [
        {"name": "a", "type": "kd", "steps": 2, "trainable": ["blocks.*.ffn.*"]},
        {"name": "b", "type": "kd", "steps": 2, "trainable": ["lm_head.weight"]},  # tied: the embedding trains
    ]
    module = DistillModule(_run(stages), teacher, student)
    module._enter_stage(0)
    assert {n for n, p in student.named_parameters() if p.requires_grad} == {
        n for n, _ in student.named_parameters() if ".ffn." in n
    }
    module._enter_stage(1)
    assert {n for n, p in student.named_parameters() if p.requires_grad} == {"embed.weight"}
    with pytest.raises(archzoo.ConfigError, match=r"stages\.0\.trainable: \['nothing\.\*'\] matches no"):
        DistillModule(_run([{"name": "a", "type": "kd", "steps": 1, "trainable": ["nothing.*"]}]), teacher, student)


def test_no_weight_decay_on_norms_biases_and_ssm_parameters():
    mamba = {**STUDENT, "mixer": {"type": "mamba", "d_state": 4}}
    teacher, student = _models(student=mamba)
    module = DistillModule(_run([{"name": "kd", "type": "kd", "steps": 1}], student=mamba), teacher, student)
    opt = module.configure_optimizers()["optimizer"]
    decay, no_decay = opt.param_groups
    names = {id(p): n for n, p in student.named_parameters()}
    nd = {names[id(p)] for p in no_decay["params"]}
    assert no_decay["weight_decay"] == 0 and decay["weight_decay"] > 0
    assert "blocks.0.mixer.A_log" in nd and "blocks.0.mixer.D" in nd and "norm.weight" in nd
    assert "blocks.0.mixer.dt_proj.bias" in nd
    assert not any(n.endswith("in_proj.weight") for n in nd)
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(student.parameters()))


def test_lr_schedules_warm_up_then_decay_per_stage():
    def run(schedule, **opt):
        stages = [{"name": "a", "type": "align", "steps": 10}, {"name": "b", "type": "kd", "steps": 10, "lr": 2e-3}]
        return load_run_config(
            {
                "teacher": "t",
                "student": {"config": STUDENT, "init": "random"},
                "data": {"source": "random"},
                "stages": stages,
                "optimizer": {"lr": 1e-3, "warmup_steps": 4, "schedule": schedule, "min_lr_ratio": 0.1, **opt},
            }
        )

    cos = run("cosine")
    assert [lr_factor(cos, s) for s in range(4)] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert lr_factor(cos, 4) == pytest.approx(1.0)
    assert lr_factor(cos, 7) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 3 / 6)))
    assert lr_factor(cos, 10) == pytest.approx(2 * 0.2), "stage b restarts warmup at its own peak lr"
    assert lr_factor(cos, 14) == pytest.approx(2.0)
    wsd = run("wsd", decay_fraction=0.2)  # decays over the last 2 steps of each stage
    assert [lr_factor(wsd, s) for s in (4, 7, 8, 9)] == pytest.approx([1.0, 1.0, 0.55, 0.1])
    const = run("constant")
    assert lr_factor(const, 9) == pytest.approx(1.0) and lr_factor(const, 19) == pytest.approx(2.0)


def test_evaluate_matches_full_logits():
    teacher, student = _models()
    teacher, student = teacher.double(), student.double()  # fp64: the sums' order cannot hide a wrong target
    blocks = torch.randint(64, (5, 9))
    out = evaluate(teacher, student, blocks, batch_size=2, token_chunk=7)
    ids, tgt = blocks[:, :-1], blocks[:, 1:].flatten()
    with torch.no_grad():
        zs, zt = student(ids).flatten(0, 1), teacher(ids).flatten(0, 1)
        ce_s = torch.nn.functional.cross_entropy(zs, tgt)
        ce_t = torch.nn.functional.cross_entropy(zt, tgt)
        kl = token_divergence(zs, zt).mean()
    assert out["ppl_student"] == pytest.approx(math.exp(ce_s), rel=1e-9)
    assert out["ppl_teacher"] == pytest.approx(math.exp(ce_t), rel=1e-9)
    assert out["kl"] == pytest.approx(kl.item(), rel=1e-9) and out["tokens"] == 40
    assert student.training and teacher.training, "evaluate restores the models' modes"


def test_validation_sums_equal_the_evaluator_and_split_the_far_half():
    """The trainer's validation (fused, chunked losses over the two halves of each block) gives the library
    evaluator's KL and perplexities, and its ``kl_far`` is the evaluator's KL over the second half of the positions."""
    teacher, student = _models()
    module = DistillModule(_run([{"name": "k", "type": "kd", "steps": 1}]), teacher, student)
    blocks = torch.randint(64, (3, 10))  # L = 9 inputs: halves of 4 and 5 positions
    module.on_validation_epoch_start()
    with torch.no_grad():
        module.validation_step(blocks, 0)
    v = {k: float(val) for (_, k), val in module._val.items()}
    ref = evaluate(teacher, student, blocks, position_buckets=[0, 4, 9])
    assert v["kl"] / v["tokens"] == pytest.approx(ref["kl"], rel=1e-9) and v["tokens"] == 27
    assert math.exp(v["ce"] / v["targets"]) == pytest.approx(ref["ppl_student"], rel=1e-9)
    assert math.exp(v["ce_teacher"] / v["targets"]) == pytest.approx(ref["ppl_teacher"], rel=1e-9)
    assert v["kl_far"] / v["tokens_far"] == pytest.approx(ref["by_position"][1]["kl"], rel=1e-9)
    assert v["tokens_far"] == 15
