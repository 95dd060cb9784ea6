# GPU call 2 of the next session (prepared 2026-12-05, third session; not yet run), right after next4.sh: carries
# the teacher's first part and the Shakespeare cache (.big/g1) with the five small wheels, and runs what needs no
# teacher. Issue 18: the decode GEMV's GPU tests, a profile of the teacher shape's captured step at batch 1 with
# cuBLAS and with the GEMV (how many kernels a step launches and where its ~1 ms goes, against the 2,000 tokens/s
# target), the GEMV step against cuBLAS in bench decode; with TUNE=1 also the decode-attention sweep (target: 1.2x
# SDPA over the sliced valid length at batch 64 x 4k; 1.14x so far).
source tools/device/setup.sh || exit 1
# The decode GEMV and its epilogues on the GPU first (bf16 against the references; Q|K|V with RoPE and the cache
# write, new on 2026-12-05, never run on a GPU yet).
timeout 150 pytest -q -p no:cacheprovider -rf -m gpu tests/kernels/test_decode_qkv_rope.py \
    tests/kernels/test_decode_linear.py 2>&1 | tail -6
# The decode-attention sweep (200 s) only with TUNE=1: the 30-minute lease fits the MLA runs first (PLAN.md).
if [ "${TUNE:-0}" = 1 ]; then
  cd tools && timeout 200 python3 tune_decode_attention.py --out $OUT/tune_decode_attention.json > $OUT/tune.log 2>&1
  echo "tune rc=$?"; grep BEST $OUT/tune.log; cd ..
fi
timeout 240 python3 tools/decode_profile.py configs/students/teacher.yaml --batch 1 --prompt 128 \
    --decode-linear cublas,kernel --out $OUT/profile_teacher_b1.json > $OUT/profile.log 2>&1
echo "profile rc=$?"; grep -A8 "replay" $OUT/profile.log | head -40
# The decode GEMV with its epilogues (SiLU x up, both residual adds: three kernels a layer fewer) against cuBLAS,
# same process (issue 18's batch-1 target: 2,000 tokens/s).
timeout 180 python3 -m archzoo bench decode configs/students/teacher.yaml configs/students/mqa.yaml --batch-sizes 1,16 \
    --prompt-lens 128 --new-tokens 128 --decode-linear cublas,kernel --out $OUT/decode_gemv > $OUT/decode.log 2>&1
echo "decode rc=$?"; grep -E "^\|" $OUT/decode.log | tail -12
