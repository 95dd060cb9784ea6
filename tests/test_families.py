"""The family registry is the one place a family is declared: every consumer reads it.

A toy mixer family defined in this file alone, registered with one call (plus its converter),
must build from YAML, convert from a teacher, hold a cache whose size ``cache_bytes`` predicts,
show its letter in ``archzoo inspect`` and validate its config with the usual error paths.
"""

from __future__ import annotations

from typing import Literal

import pytest
import torch
from pydantic import Field
from torch import nn

import archzoo
from archzoo import families
from archzoo.cli import inspect_config
from archzoo.convert import CONVERTERS, FFN_CONVERTERS, register_converter
from archzoo.layers import LayerConfig, LayerState, dtype_bytes


class ToyConfig(LayerConfig):
    type: Literal["toy"] = "toy"
    width: int = Field(default=4, gt=0)


class ToyMixer(nn.Module):
    """A causal running mean of a projection: state (B, width) holds the running sum."""

    def __init__(self, cfg: ToyConfig, d_model: int, layer_idx: int = 0, kv_source: int | None = None):
        super().__init__()
        self.cfg = cfg
        self.inp = nn.Linear(d_model, cfg.width, bias=False)
        self.o_proj = nn.Linear(cfg.width, d_model, bias=False)

    @staticmethod
    def bounded_state(cfg: ToyConfig) -> bool:
        return True

    @staticmethod
    def state_bytes(cfg: ToyConfig, d_model: int, batch_size: int, seq_len: int, dtype: torch.dtype) -> int:
        return batch_size * cfg.width * dtype_bytes(dtype)

    def new_state(self, batch_size, max_seq_len, dtype, device) -> LayerState:
        return LayerState(total=torch.zeros(batch_size, self.cfg.width, dtype=dtype, device=device))

    def forward(self, x, state, ctx):
        h = self.inp(x).cumsum(1)  # (B, T, width)
        if state is not None:
            h = h + state["total"][:, None].to(h.dtype)
            state["total"].copy_(h[:, -1])
        return self.o_proj(h)


def convert_toy(tmixer, smixer, i, ctx) -> None:
    smixer.inp.weight.copy_(tmixer.q_proj.weight[: smixer.cfg.width])
    smixer.o_proj.weight.copy_(tmixer.o_proj.weight[:, : smixer.cfg.width])


@pytest.fixture
def toy():
    families.register(families.Family("toy", "mixer", ToyConfig, ToyMixer, "T", "T toy"))
    register_converter("mixer", "toy", convert_toy)
    yield
    families.unregister("mixer", "toy")
    CONVERTERS.pop("toy")


TEACHER = {
    "vocab_size": 64,
    "d_model": 16,
    "n_layers": 2,
    "mixer": {"type": "attention", "n_heads": 2},
    "ffn": {"type": "swiglu", "d_ff": 32},
}
STUDENT = {**TEACHER, "layers": [{"at": 1, "mixer": {"type": "toy", "width": 4}}]}


def test_a_family_registered_in_one_place_builds_converts_and_caches(toy):
    torch.manual_seed(0)
    cfg = archzoo.load_config(STUDENT)
    assert [b.mixer.type for b in cfg.blocks] == ["attention", "toy"]
    assert archzoo.load_config(cfg.to_dict()).to_dict() == cfg.to_dict(), "a saved config round-trips by name"

    teacher = archzoo.build_model(TEACHER).double()
    student = archzoo.convert(teacher, STUDENT).double()
    assert isinstance(student.blocks[1].mixer, ToyMixer)
    assert torch.equal(student.blocks[1].mixer.inp.weight, teacher.blocks[1].mixer.q_proj.weight[:4])

    ids = torch.randint(0, 64, (2, 7))
    cache = student.new_cache(2, 7, dtype=torch.float64)
    assert cache.nbytes() == archzoo.cache_bytes(STUDENT, 2, 7, torch.float64) > 0
    assert cache.capacity == 7, "an attention layer bounds the cache"
    split = torch.cat([student(ids[:, :4], cache=cache), student(ids[:, 4:], cache=cache)], dim=1)
    torch.testing.assert_close(split, student(ids), rtol=0, atol=1e-12)

    assert inspect_config(STUDENT, [16])["layer_pattern"] == "A T"
    assert "T toy" in families.pattern_legend()


def test_toy_config_errors_name_the_field(toy):
    bad = {**TEACHER, "mixer": {"type": "toy", "width": 0}}
    with pytest.raises(archzoo.ConfigError, match=r"^mixer\.width: "):
        archzoo.load_config(bad)


def test_unregistered_family_is_rejected_with_the_valid_names():
    with pytest.raises(archzoo.ConfigError, match=r"mixer\.type: unknown mixer 'toy'; expected one of attention, mla"):
        archzoo.load_config({**TEACHER, "mixer": {"type": "toy"}})


def test_every_family_has_a_converter_and_a_layer():
    for name, fam in families.MIXERS.items():
        assert name in CONVERTERS, f"mixer family {name!r} has no converter in archzoo/convert"
        assert fam.layer is not None and fam.letter, name
    for name in families.FFNS:
        assert name in FFN_CONVERTERS, f"FFN family {name!r} has no converter in archzoo/convert"


def test_a_family_registered_twice_is_an_error():
    with pytest.raises(ValueError, match="already registered"):
        families.register(families.MIXERS["mamba"])
