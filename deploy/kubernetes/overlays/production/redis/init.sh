#!/bin/sh
# Init container of each redis-N pod: writes this pod's redis.conf and sentinel.conf into
# /run/redis (an emptyDir the pod's containers share).
#
# The master is whatever the Sentinels of the other pods say it is. When none answers, the set
# is starting for the first time (the StatefulSet starts redis-0 alone and the others only once
# it is ready), and redis-0 is the master. Every pod announces its stable DNS name
# (redis-N.redis-headless.<namespace>.svc.<cluster domain>), never its pod IP, which changes
# when the pod is recreated.
set -eu

: "${REDIS_PASSWORD:?from the Secret turnkey-secrets, key redis-password}"
: "${POD_NAME:?}" "${POD_NAMESPACE:?}"
CLUSTER_DOMAIN="${CLUSTER_DOMAIN:-cluster.local}"
REDIS_REPLICAS="${REDIS_REPLICAS:-3}"
SENTINEL_QUORUM="${SENTINEL_QUORUM:-2}"
MASTER_NAME="${MASTER_NAME:-mymaster}"
CONF_DIR="${CONF_DIR:-/run/redis}"

SET="${POD_NAME%-*}"
DOMAIN="redis-headless.${POD_NAMESPACE}.svc.${CLUSTER_DOMAIN}"
SELF="${POD_NAME}.${DOMAIN}"

master=""
i=0
while [ "$i" -lt "$REDIS_REPLICAS" ]; do
  peer="${SET}-${i}.${DOMAIN}"
  i=$((i + 1))
  if [ "$peer" = "$SELF" ]; then
    continue
  fi
  answer=$(timeout 3 redis-cli --raw -h "$peer" -p 26379 \
    sentinel get-master-addr-by-name "$MASTER_NAME" 2>/dev/null | head -n 1) || answer=""
  case "$answer" in
    "" | ERR* | *" "*) ;;
    *)
      master="$answer"
      break
      ;;
  esac
done
if [ -z "$master" ]; then
  master="${SET}-0.${DOMAIN}"
  echo "no Sentinel knows a master: starting the set with ${master}"
else
  echo "the Sentinels name ${master} as master"
fi

mkdir -p "$CONF_DIR"
cat > "$CONF_DIR/redis.conf" <<CONF
port 6379
bind * -::*
protected-mode no
dir /data
# The data survives a restart (AOF on the pod's volume): the fleet's TURN secrets
# (turn-server fleet set-secrets) live here besides the rooms.
appendonly yes
save ""
requirepass "${REDIS_PASSWORD}"
masterauth "${REDIS_PASSWORD}"
replica-announce-ip ${SELF}
CONF
if [ "$master" != "$SELF" ] && [ "$master" != "${POD_IP:-}" ]; then
  echo "replicaof ${master} 6379" >> "$CONF_DIR/redis.conf"
fi

# Sentinel rewrites this file as it learns the other Sentinels and replicas (the emptyDir
# keeps it across restarts of the container, not of the pod). No password on the Sentinels
# themselves: turn-server asks them for the master without one.
cat > "$CONF_DIR/sentinel.conf" <<CONF
port 26379
bind * -::*
protected-mode no
dir ${CONF_DIR}
sentinel resolve-hostnames yes
sentinel announce-hostnames yes
sentinel announce-ip ${SELF}
sentinel monitor ${MASTER_NAME} ${master} 6379 ${SENTINEL_QUORUM}
sentinel auth-pass ${MASTER_NAME} "${REDIS_PASSWORD}"
sentinel down-after-milliseconds ${MASTER_NAME} 5000
sentinel failover-timeout ${MASTER_NAME} 60000
sentinel parallel-syncs ${MASTER_NAME} 1
CONF
