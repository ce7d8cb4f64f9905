#!/usr/bin/env bash
# Local single-node Apache Kafka (KRaft) for development and tests, resolved
# from Maven Central only (no Docker, no other downloads).
#
# Usage: scripts/kafka.sh <command> [args]
#   install                  resolve broker jars + Beam IO expansion service (idempotent);
#                            the expansion service launcher jar is also copied to
#                            ~/.apache_beam/cache/jars/beam-sdks-java-io-expansion-service-<v>.jar
#                            so ReadFromKafka's default expansion service needs no download
#                            (<v> = the repo's BEAM_VERSION file, the one Beam version of
#                            the Python SDK, the Java jars, Prism and the images)
#   start                    install if needed, create certs/storage on first start,
#                            start the broker in the background and wait until ready
#   stop                     stop the broker started by `start`
#   status                   print state; exit 0 when running, 3 when not
#   wait                     wait (<= KAFKA_WAIT_TIMEOUT s, default 90) for a metadata answer
#   create-topic NAME [PARTITIONS]   create a topic if it does not exist (default 3 partitions)
#   env                      print `export ...` lines (ports, credentials, cert paths)
#   reset                    stop and delete broker data (keeps jars and certs)
#   install-prism            optional: build Beam's Prism runner (Go module
#                            github.com/apache/beam/sdks/v2/go/cmd/prism at
#                            BEAM_VERSION, via the Go module proxy) into
#                            .cache/bin/prism, for unbounded (streaming) reads
#
# Everything lives under <repo>/.cache (gitignored):
#   .cache/kafka/libs   broker classpath        .cache/kafka/data   KRaft log dirs
#   .cache/kafka/logs   broker logs             .cache/kafka/certs  CA, keystores, ca.pem
#   .cache/kafka/config generated server.properties / log4j2 config
#   .cache/jars         Beam IO expansion service classpath + launcher jar
#   .cache/bin/prism    Prism runner (install-prism only)
#
# Listeners (all 127.0.0.1): PLAINTEXT 19092, SASL_PLAINTEXT 19093, SSL 19094,
# SASL_SSL 19095, CONTROLLER 19096. SASL mechanisms PLAIN, SCRAM-SHA-256,
# SCRAM-SHA-512; user flexprice / flexprice-secret (and admin / admin-secret).
#
# Environment knobs (mostly for testing the script itself):
#   FLEXPRICE_CACHE_DIR  cache root instead of <repo>/.cache
#   KAFKA_DIR            the broker's dir instead of <cache>/kafka (share one broker between
#                        checkouts while each keeps its own jars and Prism)
#   KAFKA_MVN_ARGS       extra Maven args, e.g. -Dmaven.repo.local=/tmp/m2fresh
#   BEAM_JAR_CACHE       Beam's Python jar cache (default ~/.apache_beam/cache/jars)
#   KAFKA_WAIT_TIMEOUT   seconds for `wait` (default 90)
#   KAFKA_HEAP_OPTS      broker heap (default -Xms256m -Xmx1g)
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
CACHE="${FLEXPRICE_CACHE_DIR:-$ROOT/.cache}"
KDIR="${KAFKA_DIR:-$CACHE/kafka}"   # the broker: libs, data, logs, certs
LIBS="$KDIR/libs"
LOGS="$KDIR/logs"
DATA="$KDIR/data"
CERTS="$KDIR/certs"
CONF="$KDIR/config"
PIDFILE="$KDIR/kafka.pid"
JARS="$CACHE/jars"
BEAM_JAR_CACHE="${BEAM_JAR_CACHE:-$HOME/.apache_beam/cache/jars}"

BROKER_POM="$SCRIPT_DIR/kafka/pom.xml"
EXPANSION_POM="$SCRIPT_DIR/kafka/expansion-service-pom.xml"

HOST=127.0.0.1
PORT_PLAINTEXT=19092
PORT_SASL_PLAINTEXT=19093
PORT_SSL=19094
PORT_SASL_SSL=19095
PORT_CONTROLLER=19096

SASL_USER=flexprice
SASL_PASSWORD=flexprice-secret
ADMIN_USER=admin
ADMIN_PASSWORD=admin-secret
STORE_PASSWORD=flexprice-store

JAVA="${JAVA_HOME:+$JAVA_HOME/bin/}java"
read -r -a MVN_EXTRA <<<"${KAFKA_MVN_ARGS:-}"

log() { printf '[kafka.sh] %s\n' "$*" >&2; }
die() { printf '[kafka.sh] ERROR: %s\n' "$*" >&2; exit 1; }

mvn_run() { mvn -B -q -Dstyle.color=never "${MVN_EXTRA[@]}" "$@"; }

file_sha() { sha256sum "$1" | cut -c1-16; }

# Python used for `wait` (kafka-python) and the Beam version; optional.
python_bin() {
  if [[ -x "$ROOT/.venv/bin/python" ]]; then echo "$ROOT/.venv/bin/python";
  elif command -v python3 >/dev/null; then command -v python3; fi
}

# The one Beam version (repo-root BEAM_VERSION): the Java IO expansion service, the jar
# name Beam's Python SDK looks for, and Prism. The venv's apache-beam must match it.
beam_version() { tr -d '[:space:]' <"$ROOT/BEAM_VERSION"; }

check_python_beam() {  # warn (not fail: the broker itself needs no Python) on a mismatch
  local py v
  py="$(python_bin)"
  [[ -n "$py" ]] || return 0
  v="$("$py" -c 'from importlib.metadata import version; print(version("apache-beam"))' 2>/dev/null || true)"
  if [[ -n "$v" && "$v" != "$(beam_version)" ]]; then
    log "WARNING: $py has apache-beam $v but BEAM_VERSION is $(beam_version) (run scripts/bootstrap.sh)"
  fi
}

expansion_libs_dir() { echo "$JARS/beam-io-expansion-service-$(beam_version)"; }
expansion_launcher() { echo "$JARS/beam-sdks-java-io-expansion-service-$(beam_version).jar"; }

# ---------------------------------------------------------------- install ---

# copy_deps POM DEST [MVN_ARG...]: resolve POM's runtime dependencies into DEST (atomic,
# skipped when DEST was filled from the same POM content and arguments).
copy_deps() {
  local pom="$1" dest="$2" stamp sha
  shift 2
  sha="$(file_sha "$pom")"
  [[ $# -eq 0 ]] || sha="$( { cat "$pom"; echo "$*"; } | sha256sum | cut -c1-16)"
  stamp="$dest/.complete"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$sha" ]]; then
    log "$(basename "$dest"): already installed"
    return
  fi
  log "resolving $(basename "$pom") -> $dest"
  local tmp="$dest.tmp.$$"
  rm -rf "$tmp"
  mkdir -p "$tmp"
  local mvn_log="$KDIR/logs/mvn-$(basename "$pom" .xml).log"
  mkdir -p "$(dirname "$mvn_log")"
  if ! mvn_run -f "$pom" dependency:copy-dependencies -DincludeScope=runtime \
        -DoutputDirectory="$tmp" "$@" >"$mvn_log" 2>&1; then
    tail -n 30 "$mvn_log" >&2
    rm -rf "$tmp"
    die "maven could not resolve $pom (log: $mvn_log)"
  fi
  echo "$sha" >"$tmp/.complete"
  rm -rf "$dest"
  mv "$tmp" "$dest"
}

# Writes a jar holding only a manifest: Main-Class = Beam's ExpansionService,
# Class-Path = absolute file: URLs of the resolved jars. `java -jar` on it
# behaves like Beam's shaded io-expansion-service jar.
make_launcher_jar() {
  local libs="$1" out="$2" tmp cp="" j
  tmp="$(mktemp -d)"
  for j in "$libs"/*.jar; do cp+="file:$j "; done
  {
    echo "Manifest-Version: 1.0"
    echo "Main-Class: org.apache.beam.sdk.expansion.service.ExpansionService"
    echo "Created-By: flexprice-beam scripts/kafka.sh"
    # Manifest lines are limited to 72 bytes: wrap with continuation lines.
    local line="Class-Path: ${cp% }"
    echo "${line:0:70}"
    if (( ${#line} > 70 )); then echo "${line:70}" | fold -w 69 | sed 's/^/ /'; fi
    echo
  } >"$tmp/MANIFEST.MF"
  mkdir -p "$(dirname "$out")"
  (cd "$tmp" && jar --create --file "$out.tmp" --manifest MANIFEST.MF)
  mv "$out.tmp" "$out"
  rm -rf "$tmp"
}

cmd_install() {
  command -v mvn >/dev/null || die "mvn not found"
  command -v "$JAVA" >/dev/null || die "java not found"
  mkdir -p "$KDIR" "$JARS"
  copy_deps "$BROKER_POM" "$LIBS"

  local exp_libs launcher
  exp_libs="$(expansion_libs_dir)"
  launcher="$(expansion_launcher)"
  check_python_beam
  copy_deps "$EXPANSION_POM" "$exp_libs" "-Dbeam.version=$(beam_version)"
  make_launcher_jar "$exp_libs" "$launcher"
  mkdir -p "$BEAM_JAR_CACHE"
  cp -f "$launcher" "$BEAM_JAR_CACHE/$(basename "$launcher")"
  log "Beam IO expansion service launcher: $launcher"
  log "  (also at $BEAM_JAR_CACHE/$(basename "$launcher"), where Beam's default_io_expansion_service() looks)"
}

installed() {
  [[ -f "$LIBS/.complete" && "$(cat "$LIBS/.complete")" == "$(file_sha "$BROKER_POM")" ]]
}

# ------------------------------------------------------------------ certs ---

gen_certs() {
  if [[ -f "$CERTS/.complete" ]]; then return; fi
  command -v openssl >/dev/null || die "openssl not found"
  command -v keytool >/dev/null || die "keytool not found"
  log "generating TLS material in $CERTS"
  rm -rf "$CERTS"
  mkdir -p "$CERTS"
  (
    cd "$CERTS"
    local days=3650
    openssl req -x509 -newkey rsa:2048 -sha256 -nodes -days "$days" \
      -keyout ca.key -out ca.pem -subj "/CN=flexprice-local-kafka-ca" \
      -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    openssl req -newkey rsa:2048 -sha256 -nodes -keyout broker.key -out broker.csr \
      -subj "/CN=localhost" 2>/dev/null
    cat >broker.ext <<EOF
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth,clientAuth
subjectAltName=IP:127.0.0.1,DNS:localhost
EOF
    openssl x509 -req -in broker.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
      -sha256 -days "$days" -extfile broker.ext -out broker.pem 2>/dev/null
    cat broker.pem ca.pem >broker-chain.pem
    openssl pkcs12 -export -name broker -in broker-chain.pem -inkey broker.key \
      -out broker.keystore.p12 -passout "pass:$STORE_PASSWORD"
    keytool -importcert -noprompt -alias flexprice-local-ca -file ca.pem \
      -keystore truststore.p12 -storetype PKCS12 -storepass "$STORE_PASSWORD" >/dev/null 2>&1
    keytool -importcert -noprompt -alias flexprice-local-ca -file ca.pem \
      -keystore truststore.jks -storetype JKS -storepass "$STORE_PASSWORD" >/dev/null 2>&1
    # An unrelated CA, for tests that an untrusted server certificate is refused.
    openssl req -x509 -newkey rsa:2048 -sha256 -nodes -days "$days" \
      -keyout untrusted-ca.key -out untrusted-ca.pem -subj "/CN=untrusted-test-ca" \
      -addext "basicConstraints=critical,CA:TRUE" 2>/dev/null
    keytool -importcert -noprompt -alias untrusted-ca -file untrusted-ca.pem \
      -keystore untrusted-truststore.p12 -storetype PKCS12 -storepass "$STORE_PASSWORD" >/dev/null 2>&1
    rm -f broker.csr broker.ext ca.srl
    echo ok >.complete
  )
}

# ----------------------------------------------------------------- config ---

write_config() {
  mkdir -p "$CONF" "$LOGS" "$DATA"
  local plain_jaas="org.apache.kafka.common.security.plain.PlainLoginModule required user_${SASL_USER}=\"${SASL_PASSWORD}\" user_${ADMIN_USER}=\"${ADMIN_PASSWORD}\";"
  local scram_jaas="org.apache.kafka.common.security.scram.ScramLoginModule required;"
  cat >"$CONF/server.properties" <<EOF
# Generated by scripts/kafka.sh -- edits are overwritten on start.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$HOST:$PORT_CONTROLLER
controller.listener.names=CONTROLLER
listeners=PLAINTEXT://$HOST:$PORT_PLAINTEXT,SASL_PLAINTEXT://$HOST:$PORT_SASL_PLAINTEXT,SSL://$HOST:$PORT_SSL,SASL_SSL://$HOST:$PORT_SASL_SSL,CONTROLLER://$HOST:$PORT_CONTROLLER
advertised.listeners=PLAINTEXT://$HOST:$PORT_PLAINTEXT,SASL_PLAINTEXT://$HOST:$PORT_SASL_PLAINTEXT,SSL://$HOST:$PORT_SSL,SASL_SSL://$HOST:$PORT_SASL_SSL
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT,SSL:SSL,SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$DATA

# SASL
sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512
listener.name.sasl_plaintext.plain.sasl.jaas.config=$plain_jaas
listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config=$scram_jaas
listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=$scram_jaas
listener.name.sasl_ssl.plain.sasl.jaas.config=$plain_jaas
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=$scram_jaas
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=$scram_jaas

# TLS (server side; clients verify against certs/ca.pem)
ssl.keystore.type=PKCS12
ssl.keystore.location=$CERTS/broker.keystore.p12
ssl.keystore.password=$STORE_PASSWORD
ssl.key.password=$STORE_PASSWORD
ssl.truststore.type=PKCS12
ssl.truststore.location=$CERTS/truststore.p12
ssl.truststore.password=$STORE_PASSWORD
ssl.client.auth=none

# Single node defaults
auto.create.topics.enable=true
num.partitions=3
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.retention.hours=168
log.segment.bytes=104857600
EOF
  cat >"$CONF/log4j2.properties" <<EOF
status = warn
name = flexprice-local-kafka
appender.file.type = RollingFile
appender.file.name = FILE
appender.file.fileName = $LOGS/server.log
appender.file.filePattern = $LOGS/server.log.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 20MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 3
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.controller.name = org.apache.kafka.controller
logger.controller.level = INFO
EOF
}

storage_tool_class() {
  local jar
  for jar in "$LIBS"/kafka_2.13-*.jar; do
    if jar tf "$jar" | grep -q '^kafka/tools/StorageTool.class$'; then
      echo kafka.tools.StorageTool; return
    fi
  done
  echo org.apache.kafka.tools.StorageTool
}

format_storage() {
  if [[ -f "$DATA/meta.properties" ]]; then return; fi
  local cls cluster_id
  cls="$(storage_tool_class)"
  cluster_id="$("$JAVA" -cp "$LIBS/*" "$cls" random-uuid 2>/dev/null | tail -1)"
  [[ -n "$cluster_id" ]] || die "could not generate a cluster id with $cls"
  log "formatting KRaft storage in $DATA (cluster $cluster_id, SCRAM users $SASL_USER, $ADMIN_USER)"
  local scram=() mech user pass
  for mech in SCRAM-SHA-256 SCRAM-SHA-512; do
    for user in "$SASL_USER:$SASL_PASSWORD" "$ADMIN_USER:$ADMIN_PASSWORD"; do
      pass="${user#*:}"
      scram+=(--add-scram "$mech=[name=${user%%:*},password=$pass]")
    done
  done
  "$JAVA" -Dlog4j2.configurationFile="$CONF/log4j2.properties" -cp "$LIBS/*" "$cls" format \
    --config "$CONF/server.properties" --cluster-id "$cluster_id" "${scram[@]}" >"$LOGS/format.log" 2>&1 \
    || { cat "$LOGS/format.log" >&2; die "storage format failed"; }
}

# ---------------------------------------------------------------- process ---

running_pid() {
  local pid
  [[ -f "$PIDFILE" ]] || return 1
  pid="$(cat "$PIDFILE")"
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 1
  # Guard against a recycled pid.
  grep -q 'kafka.Kafka' "/proc/$pid/cmdline" 2>/dev/null || return 1
  echo "$pid"
}

port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

cmd_start() {
  local pid
  if pid="$(running_pid)"; then
    log "already running (pid $pid)"
    cmd_wait
    return
  fi
  local p
  for p in $PORT_PLAINTEXT $PORT_SASL_PLAINTEXT $PORT_SSL $PORT_SASL_SSL $PORT_CONTROLLER; do
    port_open "$p" && die "port $HOST:$p is already in use by another process"
  done
  installed || cmd_install
  gen_certs
  write_config
  format_storage
  log "starting broker (logs: $LOGS)"
  # setsid: the broker outlives this shell; bash execs java so $$ is its pid.
  # shellcheck disable=SC2086
  setsid bash -c 'echo $$ >"$0"; exec "$@"' "$PIDFILE" \
    "$JAVA" ${KAFKA_HEAP_OPTS:--Xms256m -Xmx1g} -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$CONF/log4j2.properties" \
    -cp "$LIBS/*" kafka.Kafka "$CONF/server.properties" \
    >"$LOGS/kafka.out" 2>&1 </dev/null &
  local i
  for i in $(seq 50); do [[ -s "$PIDFILE" ]] && break; sleep 0.1; done
  cmd_wait
}

cmd_stop() {
  local pid
  if ! pid="$(running_pid)"; then
    log "not running"
    rm -f "$PIDFILE"
    return
  fi
  log "stopping broker (pid $pid)"
  kill -TERM "$pid"
  local i
  for i in $(seq 60); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$PIDFILE"; log "stopped"; return; }
    sleep 0.5
  done
  log "broker did not stop in 30 s, killing"
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$PIDFILE"
}

cmd_status() {
  local pid
  if pid="$(running_pid)"; then
    local p state=""
    for p in $PORT_PLAINTEXT $PORT_SASL_PLAINTEXT $PORT_SSL $PORT_SASL_SSL $PORT_CONTROLLER; do
      if port_open "$p"; then state+=" $p:up"; else state+=" $p:down"; fi
    done
    echo "running pid=$pid ports:$state"
    return 0
  fi
  echo "stopped"
  return 3
}

cmd_wait() {
  local timeout="${KAFKA_WAIT_TIMEOUT:-90}" py
  local deadline=$((SECONDS + timeout))
  py="$(python_bin)"
  if [[ -n "$py" ]] && "$py" -c 'import kafka' 2>/dev/null; then
    # Ask for cluster metadata with kafka-python until it answers.
    if "$py" - "$HOST:$PORT_PLAINTEXT" "$timeout" "$PIDFILE" <<'EOF'
import os, sys, time, logging
logging.disable(logging.CRITICAL)
from kafka import KafkaConsumer
boot, timeout, pidfile = sys.argv[1], float(sys.argv[2]), sys.argv[3]
deadline = time.time() + timeout
def alive():
    try:
        os.kill(int(open(pidfile).read().strip()), 0)
        return True
    except Exception:
        return False
last = None
while time.time() < deadline:
    if not alive():
        sys.exit(2)
    try:
        c = KafkaConsumer(bootstrap_servers=boot, request_timeout_ms=5000)
        try:
            c.topics()
            sys.exit(0)
        finally:
            c.close()
    except SystemExit:
        raise
    except Exception as e:  # NoBrokersAvailable etc. while starting
        last = e
        time.sleep(0.5)
print("last error: %r" % (last,), file=sys.stderr)
sys.exit(1)
EOF
    then
      log "ready: metadata answered on $HOST:$PORT_PLAINTEXT"
      return 0
    fi
  else
    # Fallback without kafka-python: the Java admin tool.
    while ((SECONDS < deadline)); do
      running_pid >/dev/null || break
      if "$JAVA" -cp "$LIBS/*" org.apache.kafka.tools.BrokerApiVersionsCommand \
          --bootstrap-server "$HOST:$PORT_PLAINTEXT" >/dev/null 2>&1; then
        log "ready: metadata answered on $HOST:$PORT_PLAINTEXT"
        return 0
      fi
      sleep 1
    done
  fi
  if ! running_pid >/dev/null; then
    if [[ -f "$PIDFILE" ]]; then
      log "the broker exited; last log lines:"
      tail -n 40 "$LOGS/kafka.out" "$LOGS/server.log" >&2 2>/dev/null || true
      rm -f "$PIDFILE"
    fi
    die "broker is not running (scripts/kafka.sh start)"
  fi
  die "broker did not answer a metadata request within ${timeout}s"
}

cmd_create_topic() {
  local name="${1:-}" partitions="${2:-3}"
  [[ -n "$name" ]] || die "usage: $0 create-topic NAME [PARTITIONS]"
  running_pid >/dev/null || die "broker is not running (scripts/kafka.sh start)"
  "$JAVA" -Dlog4j2.configurationFile="$CONF/log4j2.properties" -cp "$LIBS/*" \
    org.apache.kafka.tools.TopicCommand --bootstrap-server "$HOST:$PORT_PLAINTEXT" \
    --create --if-not-exists --topic "$name" --partitions "$partitions" --replication-factor 1
}

cmd_env() {
  cat <<EOF
export KAFKA_BOOTSTRAP_SERVERS=$HOST:$PORT_PLAINTEXT
export KAFKA_BOOTSTRAP_PLAINTEXT=$HOST:$PORT_PLAINTEXT
export KAFKA_BOOTSTRAP_SASL_PLAINTEXT=$HOST:$PORT_SASL_PLAINTEXT
export KAFKA_BOOTSTRAP_SSL=$HOST:$PORT_SSL
export KAFKA_BOOTSTRAP_SASL_SSL=$HOST:$PORT_SASL_SSL
export KAFKA_SASL_USERNAME=$SASL_USER
export KAFKA_SASL_PASSWORD=$SASL_PASSWORD
export KAFKA_CA_PEM=$CERTS/ca.pem
export KAFKA_UNTRUSTED_CA_PEM=$CERTS/untrusted-ca.pem
export KAFKA_TRUSTSTORE_P12=$CERTS/truststore.p12
export KAFKA_TRUSTSTORE_JKS=$CERTS/truststore.jks
export KAFKA_UNTRUSTED_TRUSTSTORE_P12=$CERTS/untrusted-truststore.p12
export KAFKA_TRUSTSTORE_PASSWORD=$STORE_PASSWORD
export KAFKA_LOG_DIR=$LOGS
export BEAM_IO_EXPANSION_SERVICE_JAR=$(expansion_launcher)
export BEAM_PRISM_LOCATION=$CACHE/bin/prism
EOF
}

cmd_install_prism() {
  local version bin="$CACHE/bin/prism"
  version="v$(beam_version)"
  if [[ -x "$bin" && -f "$bin.version" && "$(cat "$bin.version")" == "$version" ]]; then
    log "prism $version: already installed at $bin"
    return
  fi
  command -v go >/dev/null || die "go not found"
  mkdir -p "$CACHE/bin"
  log "building prism $version into $bin (takes ~1.5 min)"
  # GONOSUMDB: the checksum database reachable here has no entry for the Beam module at
  # some releases (v2.62.0: 404); its dependencies are still verified against it.
  GOBIN="$CACHE/bin" GOFLAGS=-mod=mod GONOSUMDB=github.com/apache/beam go install \
    "github.com/apache/beam/sdks/v2/go/cmd/prism@$version"
  echo "$version" >"$bin.version"
}

cmd_reset() {
  cmd_stop
  log "deleting $DATA"
  rm -rf "$DATA"
}

main() {
  local cmd="${1:-}"
  shift || true
  case "$cmd" in
    install) cmd_install ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    wait) cmd_wait ;;
    create-topic) cmd_create_topic "$@" ;;
    env) cmd_env ;;
    reset) cmd_reset ;;
    install-prism) cmd_install_prism ;;
    *) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
  esac
}

main "$@"
