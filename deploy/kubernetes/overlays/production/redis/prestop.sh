#!/bin/sh
# preStop of the redis container: when this pod is the master, ask the local Sentinel for a
# failover and wait (at most 20 s) until another pod has taken over, so a planned restart
# (rollout, node drain) costs the clients one reconnection instead of down-after-milliseconds
# (5 s) plus the election. A replica stops at once.
MASTER_NAME="${MASTER_NAME:-mymaster}"
role=$(redis-cli -h 127.0.0.1 -p 6379 --raw role 2>/dev/null | head -n 1)
if [ "$role" != "master" ]; then
  exit 0
fi
# The Sentinels have no password: REDISCLI_AUTH (the data password) is not sent to them.
env -u REDISCLI_AUTH redis-cli -h 127.0.0.1 -p 26379 sentinel failover "$MASTER_NAME" \
  >/dev/null 2>&1 || exit 0
i=0
while [ "$i" -lt 20 ]; do
  role=$(redis-cli -h 127.0.0.1 -p 6379 --raw role 2>/dev/null | head -n 1)
  if [ "$role" = "slave" ]; then
    exit 0
  fi
  sleep 1
  i=$((i + 1))
done
exit 0
