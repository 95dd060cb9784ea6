# Sourced at the start of every call on the GPU machine (no network there): pure-Python wheels
# carried in .whl/, the project installed editable, the archzoo cache (Shakespeare texts, teacher)
# under /root/archzoo-cache. Usage: source tools/device/setup.sh
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || return 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 ARCHZOO_CACHE=/root/archzoo-cache TOKENIZERS_PARALLELISM=false
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . > /tmp/pip-e.log 2>&1 || { tail -20 /tmp/pip-e.log; return 1; }
mkdir -p /root/archzoo-cache/teachers
for g in .big/*/; do g=${g%/}
  [ -d "$g/cache" ] && cp -rn "$g/cache/." /root/archzoo-cache/
  for p in "$g"/part_*; do [ -f "$p" ] && cp "$p" /root/archzoo-cache/teachers/; done
done
# teacher-generated corpora packed by tools/prepare_corpus.py --pack (corpora.tgz.00, .01, ...), in any .big/ folder
for g in .big/*/; do
  if ls "$g"corpora.tgz.* > /dev/null 2>&1; then cp "$g"corpora.tgz.* /root/archzoo-cache/; fi
done
if ls /root/archzoo-cache/corpora.tgz.* > /dev/null 2>&1 && [ ! -d /root/archzoo-cache/corpora ]; then
  rm -rf /root/corpora-tmp && mkdir -p /root/corpora-tmp  # unpacked whole or not at all (parts may come over two calls)
  if cat /root/archzoo-cache/corpora.tgz.* | tar xzf - -C /root/corpora-tmp 2>/dev/null; then
    mv /root/corpora-tmp/corpora /root/archzoo-cache/corpora
  else
    echo "corpus parts incomplete so far: $(ls /root/archzoo-cache/corpora.tgz.* | wc -l) here"
  fi
fi
gguf=/root/archzoo-cache/teachers/SmolLM2-135M-Instruct.Q4_1.gguf
if [ ! -f "$gguf" ] && [ -f /root/archzoo-cache/teachers/part_ac ]; then
  cat /root/archzoo-cache/teachers/part_a? > "$gguf"
fi
true
