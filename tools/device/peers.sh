# The peers (mamba-ssm, causal-conv1d) on the GPU machine, shared by the device scripts:
#   bash tools/device/peers.sh start   # build in the background from .big/g1, unless a build ran already
#   bash tools/device/peers.sh wait    # wait (up to about 9 minutes) for build_status to say "done"; print it
# The build (tools/build_peers.sh) takes about 8 minutes on a fresh machine and survives between calls
# while the machine stays warm (setsid).
mkdir -p /root/peerlogs
case "$1" in
  start)
    [ -f /root/peerlogs/build_status ] || setsid nohup bash tools/build_peers.sh .big/g1 /root/peerlogs \
      > /root/peerlogs/out 2>&1 < /dev/null &
    ;;
  wait)
    for i in $(seq 1 110); do grep -q done /root/peerlogs/build_status 2>/dev/null && break; sleep 5; done
    cat /root/peerlogs/build_status 2>/dev/null
    ;;
  *) echo "usage: peers.sh start|wait" >&2; exit 2 ;;
esac
