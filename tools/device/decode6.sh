# GPU call (prepared 2026-12-04b, not yet run): the kernels and decode paths this session could not measure.
# GPU tests of the linear-attention update, the MLA decode kernel, MoE and the FlexAttention window, then their
# benchmarks (against the PyTorch update and fla when carried; the MQA form and masked SDPA; full causal SDPA),
# then the decode bench of the teacher shape beside the students those changes touch, with inductor defaults and with coordinate-descent tuning (BASED and the linear
# students through the update kernel, MoE's top-k by max reductions, S4D's precomputed step at batch 64, MLA-r256
# through the MLA kernel).
source tools/device/setup.sh || exit 1
timeout 80 pytest -q -p no:cacheprovider -rf tests/kernels/test_linear_attention_update.py tests/kernels/test_decode_attention_mla.py tests/layers/test_moe.py tests/layers/test_window.py 2>&1 | tail -5
timeout 150 python3 -m archzoo bench kernels --ops la_update,swa,mla --out $OUT/kernels.json 2>&1 | grep -A8 "linear_attention_update\|window attention\|MLA decode" | tail -80
timeout 300 python3 -m archzoo bench decode configs/students/{teacher,based,moe,s4,mla-r256}.yaml --batch-sizes 1,64 \
    --prompt-lens 128,4096 --new-tokens 128 --inductor-options ";coordinate_descent_tuning=1" --out $OUT/decode 2>&1 | grep -E "tokens/s|error|Error" | tail -30
