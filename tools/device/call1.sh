# GPU call 1: start the peer builds in the background, then run every GPU-marked test.
source tools/device/setup.sh || exit 1
mkdir -p /root/peerlogs
setsid nohup bash tools/build_peers.sh .big/g1 /root/peerlogs > /root/peerlogs/out 2>&1 < /dev/null &
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee $OUT/device.txt
python3 -c "import torch, triton, transformers, lightning; print(torch.__version__, triton.__version__, transformers.__version__, lightning.__version__)" | tee -a $OUT/device.txt
timeout 420 pytest -q -m gpu -p no:cacheprovider tests 2>&1 | tee $OUT/gpu_tests.log | tail -40
