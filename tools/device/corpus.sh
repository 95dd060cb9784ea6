# GPU call (prepared 2026-12-04d, not yet run): the 20M-token teacher corpus of every smollm2 distill run (issue 16,
# item 2), generated as `archzoo distill` would (tools/prepare_corpus.py: same source settings, same cache key), timed,
# and sent back as corpora.tgz.NN parts of 15 MiB. Here: move them into .big/g3/ (git-ignored); setup.sh unpacks them
# into the cache on the GPU machine, so later calls distill at once instead of generating again.
# Carry: .whl, .big/g1, and .big/g2 in the call before (the teacher GGUF comes in two parts; the machine stays warm).
source tools/device/setup.sh || exit 1
ls /root/archzoo-cache/teachers/*.gguf || { echo "no teacher: carry .big/g1 and .big/g2 first"; exit 1; }
# Cut by the time limit (SIGINT), it packs the finished 2M-token shards: call it again while warm, or carry the parts.
timeout -s INT ${CORPUS_TIMEOUT:-540} python3 tools/prepare_corpus.py configs/distill/smollm2-mla.yaml --pack $OUT 2>&1 \
    | grep -E 'shard|size_tokens|interrupted|packed|Error' | tail -16
ls -la $OUT
