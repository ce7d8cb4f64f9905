#!/usr/bin/env bash
# Local, Docker-free Apache Flink session cluster + Beam Flink job server + Python SDK
# worker pool, for running the flexprice-beam pipelines on a REAL Flink cluster.
#
#   scripts/flink.sh install               fetch/build everything into .cache/flink (idempotent)
#   scripts/flink.sh start                 install if needed, then start the JobManager, two
#                                          TaskManagers each with its own Python SDK worker
#                                          pool, the Beam job server and the expansion service
#                                          (also brings back a worker that kill-worker took)
#   scripts/flink.sh stop                  stop everything started by `start`
#   scripts/flink.sh status                what is up (pids, ports, Flink /overview); exit 3 if not all up
#   scripts/flink.sh env                   export lines: FLINK_REST, BEAM_JOB_ENDPOINT, BEAM_WORKER_POOL, ...
#   scripts/flink.sh restart-taskmanager [--kill]
#                                          stop (SIGTERM, or SIGKILL with --kill) the TaskManager
#                                          and start a fresh one; running jobs fail over and are
#                                          restored from their last checkpoint
#   scripts/flink.sh kill-worker N         SIGKILL TaskManager N, its worker pool and its SDK
#                                          workers (a lost machine); `start` brings it back
#   scripts/flink.sh logs [component]      tail a log (jobmanager|taskmanager|jobserver|expansion|workerpool|sdk)
#
# Submit a Beam Python pipeline (see scripts/flink/smoke.py):
#   --runner=PortableRunner --job_endpoint=localhost:8099 \
#   --environment_type=EXTERNAL --environment_config=localhost:50000 [--streaming --checkpointing_interval=5000]
#   cross-language transforms (ReadFromKafka): expansion_service="localhost:8097"
#
# Where things come from (only package registries are reachable):
#   * Flink 1.19.3 distribution jars (lib/flink-dist, log4j, table, ...) and
#     bin/bash-java-utils.jar: the `apache-flink-libraries` sdist on PyPI, which is the
#     binary distribution's lib/ + bin/ repackaged for PyFlink (pip download --no-deps).
#   * Beam Flink job server: Maven Central does not (here) carry the prebuilt
#     beam-runners-flink-<v>-job-server jars, so it is shaded from the per-module
#     artifacts with scripts/flink/job-server/pom.xml (see the note there).
#   * Python SDK harness: the repo's .venv (apache-beam 2.77.0), one process per SDK
#     worker, booted by scripts/flink/sdk_worker.sh + sdk_worker_boot.py.
# See docs/flink-notes.md for versions, timings and caveats.
#
# Environment overrides: FLINK_CACHE_DIR, FLINK_VERSION, BEAM_JAVA_VERSION (2.70.0|2.62.0), PYTHON,
# MAVEN_REPO_LOCAL (-> -Dmaven.repo.local), FLINK_REST_PORT, BEAM_JOB_PORT,
# BEAM_ARTIFACT_PORT, BEAM_EXPANSION_PORT, BEAM_WORKER_POOL_PORT, FLINK_TM_SLOTS,
# FLINK_START_TIMEOUT, BEAM_EXPANSION_EXPERIMENTS (default use_deprecated_read),
# FLINK_TASKMANAGERS (default 2), BEAM_WORKER_POOL_NAME (default flexprice-sdk-pool),
# FLINK_TM_EXTRA_HOSTS ("IP name;IP name": more names the TaskManager JVMs resolve).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
CACHE="${FLINK_CACHE_DIR:-$ROOT/.cache/flink}"

FLINK_VERSION="${FLINK_VERSION:-1.19.3}"
FLINK_MAJOR="${FLINK_VERSION%.*}"                    # 1.19
# Java side (job server + expansion service); the Python SDK side is the venv's 2.77.0.
# Newest beam-runners-flink-1.19 on the reachable Maven Central is 2.70.0 (no 1.20/2.x
# runner, no prebuilt *-job-server jars at all). 2.62.0 is the newest release whose
# modules all exist at the same version; 2.70.0 needs beam-runners-java-job-service 2.65.0
# (2.70.0 is missing), but its KafkaIO understands what Python 2.77's ReadFromKafka sends
# (2.62.0 rejects it: no setDynamicReadPollIntervalSeconds).
BEAM_JAVA_VERSION="${BEAM_JAVA_VERSION:-2.70.0}"
case "$BEAM_JAVA_VERSION" in
  2.70.0) _JOBSERVICE=2.65.0 _SLF4J=2.0.16 ;;
  2.62.0) _JOBSERVICE=2.62.0 _SLF4J=1.7.30 ;;
  *) _JOBSERVICE=$BEAM_JAVA_VERSION _SLF4J=2.0.16 ;;
esac
BEAM_JOBSERVICE_VERSION="${BEAM_JOBSERVICE_VERSION:-$_JOBSERVICE}"
BEAM_SLF4J_VERSION="${BEAM_SLF4J_VERSION:-$_SLF4J}"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"

HOST=127.0.0.1
REST_PORT="${FLINK_REST_PORT:-8081}"
JM_RPC_PORT="${FLINK_JM_RPC_PORT:-6123}"
JOB_PORT="${BEAM_JOB_PORT:-8099}"
ARTIFACT_PORT="${BEAM_ARTIFACT_PORT:-8098}"
EXPANSION_PORT="${BEAM_EXPANSION_PORT:-8097}"
# use_deprecated_read: KafkaIO expands to the UnboundedSource read, which Flink runs natively
# and whose commit_offset_in_finalize commits when a checkpoint completes (the SDF read
# commits from a 5-minute window instead, unrelated to delivery). Empty = Beam's default.
EXPANSION_EXPERIMENTS="${BEAM_EXPANSION_EXPERIMENTS-use_deprecated_read}"
POOL_PORT="${BEAM_WORKER_POOL_PORT:-50000}"
TM_SLOTS="${FLINK_TM_SLOTS:-2}"
# Worker N (TaskManager N + SDK worker pool N) -- see "workers" below.
TM_COUNT="${FLINK_TASKMANAGERS:-2}"
POOL_NAME="${BEAM_WORKER_POOL_NAME:-flexprice-sdk-pool}"
START_TIMEOUT="${FLINK_START_TIMEOUT:-180}"

FLINK_HOME="$CACHE/flink-$FLINK_VERSION"
FLINK_DIST_JAR="$FLINK_HOME/lib/flink-dist-$FLINK_VERSION.jar"
DOWNLOADS="$CACHE/downloads"
JOBSERVER_NAME="beam-runners-flink-$FLINK_MAJOR-job-server-$BEAM_JAVA_VERSION"
JOBSERVER_JAR="$CACHE/jobserver/$JOBSERVER_NAME.jar"
CONF_DIR="$CACHE/conf"
LOG_DIR="$CACHE/logs"
RUN_DIR="$CACHE/run"
DATA_DIR="$CACHE/data"          # checkpoints, savepoints, tmp, blobs, beam artifacts

# Flink's own default JVM flags for Java 17 (flink-dist config.yaml `env.java.opts.all`);
# the bin/ scripts would add them, we start the JVMs directly so we add them here.
JAVA17_OPTS=(
  --add-exports=java.base/sun.net.util=ALL-UNNAMED
  --add-exports=java.rmi/sun.rmi.registry=ALL-UNNAMED
  --add-exports=jdk.compiler/com.sun.tools.javac.api=ALL-UNNAMED
  --add-exports=jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED
  --add-exports=jdk.compiler/com.sun.tools.javac.parser=ALL-UNNAMED
  --add-exports=jdk.compiler/com.sun.tools.javac.tree=ALL-UNNAMED
  --add-exports=jdk.compiler/com.sun.tools.javac.util=ALL-UNNAMED
  --add-exports=java.security.jgss/sun.security.krb5=ALL-UNNAMED
  --add-opens=java.base/java.lang=ALL-UNNAMED
  --add-opens=java.base/java.net=ALL-UNNAMED
  --add-opens=java.base/java.io=ALL-UNNAMED
  --add-opens=java.base/java.nio=ALL-UNNAMED
  --add-opens=java.base/sun.nio.ch=ALL-UNNAMED
  --add-opens=java.base/java.lang.reflect=ALL-UNNAMED
  --add-opens=java.base/java.text=ALL-UNNAMED
  --add-opens=java.base/java.time=ALL-UNNAMED
  --add-opens=java.base/java.util=ALL-UNNAMED
  --add-opens=java.base/java.util.concurrent=ALL-UNNAMED
  --add-opens=java.base/java.util.concurrent.atomic=ALL-UNNAMED
  --add-opens=java.base/java.util.concurrent.locks=ALL-UNNAMED
)

# what bin/config.sh exports for the Flink processes
FLINK_ENV=("FLINK_HOME=$FLINK_HOME" "FLINK_CONF_DIR=$CONF_DIR" "FLINK_LIB_DIR=$FLINK_HOME/lib"
  "FLINK_PLUGINS_DIR=$FLINK_HOME/plugins" "FLINK_OPT_DIR=$FLINK_HOME/opt" "FLINK_BIN_DIR=$FLINK_HOME/bin"
  "FLINK_LOG_DIR=$LOG_DIR")

log() { printf '[flink.sh] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

need() { command -v "$1" >/dev/null 2>&1 || die "'$1' not found on PATH"; }

# ----------------------------------------------------------------------------- process helpers

# role -> substring that must appear in /proc/<pid>/cmdline (guards against pid reuse)
marker_for() {
  case "$1" in
    jobmanager)  echo "StandaloneSessionClusterEntrypoint" ;;
    taskmanager*) echo "TaskManagerRunner" ;;
    jobserver)   echo "FlinkJobServerDriver" ;;
    expansion)   echo "org.apache.beam.sdk.expansion.service.ExpansionService" ;;
    workerpool*) echo "flink/worker_pool.py" ;;
    *) die "unknown role $1" ;;
  esac
}

pid_of() {  # prints the pid of a running role, or nothing
  local role=$1 f="$RUN_DIR/$1.pid" pid
  [[ -f $f ]] || return 0
  pid=$(<"$f")
  [[ $pid =~ ^[0-9]+$ ]] || return 0
  if kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$(marker_for "$role")"; then
    echo "$pid"
  fi
}

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

wait_port() {  # host port timeout label
  local deadline=$((SECONDS + $3))
  until port_open "$1" "$2"; do
    ((SECONDS < deadline)) || return 1
    sleep 0.5
  done
}

# launch ROLE LOGFILE cmd... : detached (own session), stdio to LOGFILE, pid file written
launch() {
  local role=$1 logfile=$2; shift 2
  mkdir -p "$RUN_DIR" "$LOG_DIR"
  # setsid: its own session/process group, so the caller's Ctrl-C or job kill does not
  # take it down. In a non-interactive shell the child is not a group leader, so setsid
  # exec()s without forking and $! is the real pid.
  # cwd = the cache dir, so nothing relative lands in the caller's directory.
  (cd "$CACHE" && exec setsid "$@" </dev/null >>"$logfile" 2>&1) &
  echo $! >"$RUN_DIR/$role.pid"
}

stop_role() {  # role [signal]
  local role=$1 sig=${2:-TERM} pid i
  pid=$(pid_of "$role")
  if [[ -z $pid ]]; then rm -f "$RUN_DIR/$role.pid"; return 0; fi
  log "stopping $role (pid $pid, SIG$sig)"
  kill -"$sig" "$pid" 2>/dev/null || true
  for ((i = 0; i < 60; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "$role did not exit after 30 s, SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$RUN_DIR/$role.pid"
}

rest_get() { curl -fsS --max-time 5 "http://$HOST:$REST_PORT$1"; }

# ----------------------------------------------------------------------------- install

install_flink() {
  if [[ -f $FLINK_DIST_JAR && -f $FLINK_HOME/bin/bash-java-utils.jar ]]; then
    log "Flink $FLINK_VERSION already installed in $FLINK_HOME"
    return 0
  fi
  local sdist="$DOWNLOADS/apache-flink-libraries-$FLINK_VERSION.tar.gz"
  mkdir -p "$DOWNLOADS"
  if [[ ! -s $sdist ]]; then
    log "downloading apache-flink-libraries==$FLINK_VERSION from PyPI (~230 MB)"
    # --no-binary: it is published as an sdist only; pip prepares its metadata (harmless).
    "$PYTHON" -m pip download --quiet --no-deps --no-binary :all: \
      "apache-flink-libraries==$FLINK_VERSION" -d "$DOWNLOADS"
  fi
  [[ -s $sdist ]] || die "pip did not produce $sdist"
  log "unpacking Flink $FLINK_VERSION lib/ + bin/ into $FLINK_HOME"
  local tmp="$CACHE/.unpack.$$" top="apache-flink-libraries-$FLINK_VERSION"
  rm -rf "$tmp" && mkdir -p "$tmp"
  tar --no-same-owner -xzf "$sdist" -C "$tmp" "$top/deps/lib" "$top/deps/bin"
  rm -rf "$FLINK_HOME" && mkdir -p "$FLINK_HOME/plugins"
  mv "$tmp/$top/deps/lib" "$FLINK_HOME/lib"
  mv "$tmp/$top/deps/bin" "$FLINK_HOME/bin"
  rm -rf "$tmp"
  [[ -f $FLINK_DIST_JAR ]] || die "flink-dist jar missing after unpack"
}

# The jar is rebuilt when the pom or the version knobs change (stamp next to the jar).
jobserver_stamp() {
  { sha256sum <"$SCRIPT_DIR/flink/job-server/pom.xml"
    echo "$BEAM_JAVA_VERSION $FLINK_MAJOR $BEAM_JOBSERVICE_VERSION $BEAM_SLF4J_VERSION"; } | sha256sum | cut -c1-16
}

install_jobserver() {
  local stamp
  stamp=$(jobserver_stamp)
  if [[ -s $JOBSERVER_JAR && $(cat "$JOBSERVER_JAR.stamp" 2>/dev/null) == "$stamp" ]]; then
    log "Beam job server jar present: $JOBSERVER_JAR"
    return 0
  fi
  need mvn
  local mvn_args=(-B -q -f "$SCRIPT_DIR/flink/job-server/pom.xml" package
    "-Djobserver.buildDir=$CACHE/build/job-server"
    "-Dbeam.java.version=$BEAM_JAVA_VERSION" "-Dbeam.flink.major=$FLINK_MAJOR"
    "-Dbeam.jobservice.version=$BEAM_JOBSERVICE_VERSION" "-Dslf4j.version=$BEAM_SLF4J_VERSION")
  [[ -n ${MAVEN_REPO_LOCAL:-} ]] && mvn_args+=("-Dmaven.repo.local=$MAVEN_REPO_LOCAL")
  log "building $JOBSERVER_NAME.jar with Maven (shade of beam-runners-flink-$FLINK_MAJOR:$BEAM_JAVA_VERSION)"
  mvn "${mvn_args[@]}" >"$CACHE/build/mvn.log" 2>&1 || { tail -40 "$CACHE/build/mvn.log" >&2; die "maven build failed (log: $CACHE/build/mvn.log)"; }
  mkdir -p "$(dirname "$JOBSERVER_JAR")"
  cp "$CACHE/build/job-server/$JOBSERVER_NAME.jar" "$JOBSERVER_JAR.tmp"
  mv "$JOBSERVER_JAR.tmp" "$JOBSERVER_JAR"
  echo "$stamp" >"$JOBSERVER_JAR.stamp"
  rm -rf "$CACHE/build/job-server"   # the shade output is a 2nd copy of the 190 MB jar
}

cmd_install() {
  need java; need curl; need tar
  [[ -x $PYTHON ]] || die "python not found at $PYTHON (set PYTHON=...)"
  "$PYTHON" -c 'import apache_beam' 2>/dev/null || die "$PYTHON cannot import apache_beam"
  mkdir -p "$CACHE/build" "$LOG_DIR" "$RUN_DIR" "$DATA_DIR"
  local t0=$SECONDS
  install_flink
  install_jobserver
  log "install done in $((SECONDS - t0)) s"
}

is_installed() { [[ -f $FLINK_DIST_JAR && -s $JOBSERVER_JAR && $(cat "$JOBSERVER_JAR.stamp" 2>/dev/null) == "$(jobserver_stamp)" ]]; }

# ----------------------------------------------------------------------------- config

write_conf() {
  mkdir -p "$CONF_DIR" "$DATA_DIR"/{checkpoints,savepoints,tmp,blobs,artifacts,web,sdk-workers}
  # Flink >= 1.19 reads conf/config.yaml (standard YAML; flat dotted keys are accepted).
  cat >"$CONF_DIR/config.yaml" <<EOF
# Generated by scripts/flink.sh -- edits are overwritten on every start.
jobmanager.rpc.address: $HOST
jobmanager.rpc.port: $JM_RPC_PORT
jobmanager.bind-host: $HOST
jobmanager.memory.process.size: 1024m
jobmanager.execution.failover-strategy: region
taskmanager.host: $HOST
taskmanager.bind-host: $HOST
taskmanager.numberOfTaskSlots: $TM_SLOTS
taskmanager.memory.process.size: 2048m
# each Beam job leaks its user-code class loader (~50 MB of metaspace): 256m (the default)
# ran out after ~5 jobs on one TaskManager; restart-taskmanager clears it
taskmanager.memory.jvm-metaspace.size: 512m
parallelism.default: 1
rest.address: $HOST
rest.bind-address: $HOST
rest.port: $REST_PORT
# quicker detection of a dead TaskManager than the 50 s default
heartbeat.interval: 5000
heartbeat.timeout: 20000
# restart failed jobs (e.g. after a TaskManager loss) from the last checkpoint
restart-strategy.type: fixed-delay
restart-strategy.fixed-delay.attempts: 1000
restart-strategy.fixed-delay.delay: 5 s
state.backend.type: hashmap
state.checkpoints.dir: file://$DATA_DIR/checkpoints
state.savepoints.dir: file://$DATA_DIR/savepoints
execution.checkpointing.externalized-checkpoint-retention: RETAIN_ON_CANCELLATION
state.checkpoints.num-retained: 3
# io.tmp.dirs / blob.storage.directory are set per process on the command line
# (data/{tmp,blobs}/{jobmanager,taskmanager}); cached job jars expire after 5 min, not 1 h
blob.service.cleanup.interval: 300
web.tmpdir: $DATA_DIR/web
web.cancel.enable: true
# two TaskManagers: spread a job's subtasks over both (a lost worker then matters)
cluster.evenly-spread-out-slots: true
EOF
  write_worker_hosts
  cat >"$CONF_DIR/log4j.properties" <<'EOF'
# Generated by scripts/flink.sh (log4j2 properties; file = -Dlog.file)
monitorInterval = 30
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = MainAppender
logger.pekko.name = org.apache.pekko
logger.pekko.level = INFO
logger.kafka.name = org.apache.kafka
logger.kafka.level = INFO
logger.hadoop.name = org.apache.hadoop
logger.hadoop.level = WARN
logger.netty.name = org.jboss.netty.channel.DefaultChannelPipeline
logger.netty.level = OFF
appender.main.name = MainAppender
appender.main.type = RollingFile
appender.main.append = true
appender.main.fileName = ${sys:log.file}
appender.main.filePattern = ${sys:log.file}.%i
appender.main.layout.type = PatternLayout
appender.main.layout.pattern = %d{yyyy-MM-dd HH:mm:ss,SSS} %-5p %-60c %x - %m%n
appender.main.policies.type = Policies
appender.main.policies.size.type = SizeBasedTriggeringPolicy
appender.main.policies.size.size = 100MB
appender.main.policies.startup.type = OnStartupTriggeringPolicy
appender.main.strategy.type = DefaultRolloverStrategy
appender.main.strategy.max = 5
EOF
}

flink_classpath() {  # like bin/config.sh: lib/*.jar sorted, flink-dist last
  local cp="" j
  for j in "$FLINK_HOME"/lib/*.jar; do
    [[ $j == "$FLINK_DIST_JAR" ]] && continue
    cp+="$j:"
  done
  echo "${cp}$FLINK_DIST_JAR"
}

# BashJavaUtils computes -Xmx/-Xms/... and the derived memory config, exactly as
# bin/jobmanager.sh / bin/taskmanager.sh do. Sets JVM_PARAMS (array) and DYN_CONFIGS (array).
memory_params() {
  local what=$1 out
  out=$(java -classpath "$FLINK_HOME/bin/bash-java-utils.jar:$(flink_classpath)" \
    org.apache.flink.runtime.util.bash.BashJavaUtils "$what" --configDir "$CONF_DIR" 2>&1) ||
    { echo "$out" | tail -20 >&2; die "BashJavaUtils $what failed"; }
  local results
  results=$(printf '%s\n' "$out" | grep '^BASH_JAVA_UTILS_EXEC_RESULT:' | sed 's/^BASH_JAVA_UTILS_EXEC_RESULT://')
  [[ -n $results ]] || { echo "$out" | tail -20 >&2; die "BashJavaUtils $what printed no result"; }
  read -r -a JVM_PARAMS <<<"$(sed -n 1p <<<"$results")"
  read -r -a DYN_CONFIGS <<<"$(sed -n 2p <<<"$results")"
}

# ----------------------------------------------------------------------------- start

start_jobmanager() {
  if [[ -n $(pid_of jobmanager) ]]; then log "jobmanager already running (pid $(pid_of jobmanager))"; return 0; fi
  port_open "$HOST" "$REST_PORT" && die "port $REST_PORT is already taken by something else"
  memory_params GET_JM_RESOURCE_PARAMS
  # No HA: a new JobManager knows no previous job, so its blobs/tmp files are garbage
  # (each job ships the ~190 MB job server jar as a blob).
  rm -rf "$DATA_DIR/tmp/jobmanager" "$DATA_DIR/blobs/jobmanager"
  mkdir -p "$DATA_DIR/tmp/jobmanager" "$DATA_DIR/blobs/jobmanager"
  local logf="$LOG_DIR/flink-jobmanager.log"
  log "starting JobManager (REST http://$HOST:$REST_PORT)"
  launch jobmanager "$LOG_DIR/flink-jobmanager.out" \
    env "${FLINK_ENV[@]}" java "${JVM_PARAMS[@]}" "${JAVA17_OPTS[@]}" \
    "-Dlog.file=$logf" "-Dlog4j.configurationFile=file:$CONF_DIR/log4j.properties" \
    -classpath "$(flink_classpath)" \
    org.apache.flink.runtime.entrypoint.StandaloneSessionClusterEntrypoint \
    --configDir "$CONF_DIR" --executionMode cluster "${DYN_CONFIGS[@]}" \
    -D "io.tmp.dirs=$DATA_DIR/tmp/jobmanager" -D "blob.storage.directory=$DATA_DIR/blobs/jobmanager"
}

start_taskmanager() {  # [N]: TaskManager N (default 1)
  local n=${1:-1} role
  role=$(tm_role "$n")
  if [[ -n $(pid_of "$role") ]]; then log "$role already running (pid $(pid_of "$role"))"; return 0; fi
  memory_params GET_TM_RESOURCE_PARAMS
  # A killed TaskManager leaves its blob cache (job jars) and tmp/working dirs behind;
  # only this TM uses these dirs, so clear them before starting a new one.
  rm -rf "$DATA_DIR/tmp/$role" "$DATA_DIR/blobs/$role"
  mkdir -p "$DATA_DIR/tmp/$role" "$DATA_DIR/blobs/$role"
  local logf="$LOG_DIR/flink-$role.log"
  log "starting $role ($TM_SLOTS slots, SDK worker pool $(pool_address "$n"))"
  launch "$role" "$LOG_DIR/flink-$role.out" \
    env "${FLINK_ENV[@]}" java "${JVM_PARAMS[@]}" "${JAVA17_OPTS[@]}" \
    "-Djdk.net.hosts.file=$CONF_DIR/hosts-$role" \
    "-Dlog.file=$logf" "-Dlog4j.configurationFile=file:$CONF_DIR/log4j.properties" \
    -classpath "$(flink_classpath)" \
    org.apache.flink.runtime.taskexecutor.TaskManagerRunner \
    --configDir "$CONF_DIR" "${DYN_CONFIGS[@]}" \
    -D "io.tmp.dirs=$DATA_DIR/tmp/$role" -D "blob.storage.directory=$DATA_DIR/blobs/$role"
}

registered_taskmanagers() {
  rest_get /overview 2>/dev/null | "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["taskmanagers"])' 2>/dev/null || echo 0
}

wait_taskmanagers() {  # wait until /overview shows >= $1 TaskManagers
  local want=$1 deadline=$((SECONDS + START_TIMEOUT)) n
  while :; do
    n=$(registered_taskmanagers)
    ((n >= want)) && { log "Flink /overview: $n TaskManager(s) registered"; return 0; }
    ((SECONDS < deadline)) || die "no TaskManager registered after ${START_TIMEOUT}s (see $LOG_DIR)"
    [[ -n $(pid_of jobmanager) ]] || die "JobManager died (see $LOG_DIR/flink-jobmanager.log / .out)"
    local i
    for ((i = 1; i <= TM_COUNT; i++)); do
      [[ -n $(pid_of "$(tm_role "$i")") ]] || die "$(tm_role "$i") died (see $LOG_DIR/flink-$(tm_role "$i").log / .out)"
    done
    sleep 1
  done
}

start_workerpool() {  # [N]: the SDK worker pool of TaskManager N (default 1)
  local n=${1:-1} role addr
  role=$(pool_role "$n")
  addr=$(pool_address "$n")
  if [[ -n $(pid_of "$role") ]]; then log "$role already running (pid $(pid_of "$role"))"; return 0; fi
  port_open "${addr%:*}" "$POOL_PORT" && die "$addr is already taken by something else"
  log "starting Python SDK $role on $addr"
  # Beam's worker pool servicer starts each SDK worker through scripts/flink/sdk_worker.sh
  # (the "container executable"), which runs the venv's SDK harness the way Beam's
  # container boot does (provision info -> pipeline options, logging to the runner).
  launch "$role" "$LOG_DIR/$role.log" \
    env "PATH=$(dirname "$PYTHON"):$PATH" "PYTHON=$PYTHON" \
    "FLEXPRICE_FLINK_LOG_DIR=$LOG_DIR" "FLEXPRICE_SDK_WORK_DIR=$DATA_DIR/sdk-workers/$role" \
    "$PYTHON" "$SCRIPT_DIR/flink/worker_pool.py" --host "${addr%:*}" \
    --service_port="$POOL_PORT" --container_executable="$SCRIPT_DIR/flink/sdk_worker.sh"
  wait_port "${addr%:*}" "$POOL_PORT" 60 || die "$role did not open $addr (see $LOG_DIR/$role.log)"
}

start_jobserver() {
  if [[ -n $(pid_of jobserver) ]]; then log "job server already running (pid $(pid_of jobserver))"; return 0; fi
  port_open localhost "$JOB_PORT" && die "port $JOB_PORT is already taken by something else"
  log "starting Beam Flink job server (job localhost:$JOB_PORT, artifacts :$ARTIFACT_PORT)"
  # --expansion-port=-1: the job server's built-in expansion service always gives Java
  # transforms a DOCKER environment; start_expansion runs one with EMBEDDED instead.
  launch jobserver "$LOG_DIR/jobserver.log" \
    java "${JAVA17_OPTS[@]}" -Xmx1g -cp "$JOBSERVER_JAR" org.apache.beam.runners.flink.FlinkJobServerDriver \
    --flink-master="$HOST:$REST_PORT" --flink-conf-dir="$CONF_DIR" \
    --job-host=localhost --job-port="$JOB_PORT" \
    --artifact-port="$ARTIFACT_PORT" --expansion-port=-1 \
    --artifacts-dir="$DATA_DIR/artifacts"
  wait_port localhost "$JOB_PORT" 120 || die "job server did not open port $JOB_PORT (see $LOG_DIR/jobserver.log)"
}

# Java expansion service for cross-language transforms (ReadFromKafka & co.), from the same
# jar as the job server. --defaultEnvironmentType=EMBEDDED: the expanded Java transforms run
# in a Java SDK harness inside the TaskManager JVM (classes from the job server jar, which
# Flink receives as the job's user jar) -- no Docker, no Java boot binary.
start_expansion() {
  if [[ -n $(pid_of expansion) ]]; then log "expansion service already running (pid $(pid_of expansion))"; return 0; fi
  port_open localhost "$EXPANSION_PORT" && die "port $EXPANSION_PORT is already taken by something else"
  log "starting Beam Java expansion service on localhost:$EXPANSION_PORT (EMBEDDED environment)"
  launch expansion "$LOG_DIR/expansion.log" \
    java "${JAVA17_OPTS[@]}" -Xmx512m -cp "$JOBSERVER_JAR" org.apache.beam.sdk.expansion.service.ExpansionService \
    "$EXPANSION_PORT" --defaultEnvironmentType=EMBEDDED \
    ${EXPANSION_EXPERIMENTS:+"--experiments=$EXPANSION_EXPERIMENTS"}
  wait_port localhost "$EXPANSION_PORT" 120 || die "expansion service did not open port $EXPANSION_PORT (see $LOG_DIR/expansion.log)"
}

cmd_start() {
  local t0=$SECONDS
  is_installed || cmd_install
  mkdir -p "$LOG_DIR" "$RUN_DIR"
  write_conf
  start_jobmanager
  start_workers
  start_jobserver
  start_expansion
  log "all up in $((SECONDS - t0)) s"
  cmd_status
}

# ----------------------------------------------------------------------------- workers
# Worker N = TaskManager N + its own Python SDK worker pool (what one machine runs).
# Every TaskManager dials the same pool address ($POOL_NAME:$POOL_PORT, the job's
# --environment_config), and each resolves that name to its own loopback address through
# a JVM hosts file (jdk.net.hosts.file): TaskManager N -> 127.0.0.N, where pool N listens
# (scripts/flink/worker_pool.py: Beam's pool servicer bound to one address). Killing worker N
# therefore takes its SDK workers with it, as losing a machine would.

tm_role() { if (($1 == 1)); then echo taskmanager; else echo "taskmanager-$1"; fi; }
pool_role() { if (($1 == 1)); then echo workerpool; else echo "workerpool-$1"; fi; }
pool_address() { echo "127.0.0.$1:$POOL_PORT"; }
worker_roles() { local i; for ((i = 1; i <= TM_COUNT; i++)); do echo "$(tm_role "$i") $(pool_role "$i")"; done; }

write_worker_hosts() {  # one hosts file per TaskManager JVM (it then resolves only these)
  local i me
  me=$(hostname 2>/dev/null || echo localhost)
  for ((i = 1; i <= TM_COUNT; i++)); do
    cat >"$CONF_DIR/hosts-$(tm_role "$i")" <<EOF
127.0.0.1 localhost $me
::1 localhost ip6-localhost
127.0.0.$i $POOL_NAME
EOF
    # FLINK_TM_EXTRA_HOSTS="10.0.0.5 kafka-1;10.0.0.6 kafka-2": more names the JVMs resolve
    [[ -n ${FLINK_TM_EXTRA_HOSTS:-} ]] && tr ';' '\n' <<<"$FLINK_TM_EXTRA_HOSTS" >>"$CONF_DIR/hosts-$(tm_role "$i")"
  done
  return 0
}

start_workers() {
  local i
  for ((i = 1; i <= TM_COUNT; i++)); do
    start_workerpool "$i"
    start_taskmanager "$i"
  done
  wait_taskmanagers "$TM_COUNT"
}

stop_workers() {
  local i
  for ((i = TM_COUNT; i >= 1; i--)); do
    stop_role "$(tm_role "$i")"
    stop_role "$(pool_role "$i")"
  done
}

sdk_workers_of() {  # pids of the SDK workers started by pool N (by their work dir)
  local dir="$DATA_DIR/sdk-workers/$(pool_role "$1")" d pid
  for d in /proc/[0-9]*; do
    pid=${d#/proc/}
    if tr '\0' '\n' <"$d/environ" 2>/dev/null | grep -q -e "^SEMI_PERSISTENT_DIRECTORY=$dir/" -e "^FLEXPRICE_SDK_WORK_DIR=$dir\$"; then
      echo "$pid"
    fi
  done | sort -u
}

cmd_kill_worker() {  # N: SIGKILL TaskManager N, its worker pool and its SDK workers at once
  local n=${1:-} pids
  [[ $n =~ ^[0-9]+$ ]] && ((n >= 1 && n <= TM_COUNT)) || die "kill-worker needs N in 1..$TM_COUNT"
  pids="$(pid_of "$(tm_role "$n")") $(pid_of "$(pool_role "$n")") $(sdk_workers_of "$n")"
  [[ -n ${pids// /} ]] || die "worker $n is not running"
  log "SIGKILL worker $n: pids $(echo $pids)"
  kill -KILL $pids 2>/dev/null || true
  rm -f "$RUN_DIR/$(tm_role "$n").pid" "$RUN_DIR/$(pool_role "$n").pid"
}

# ----------------------------------------------------------------------------- stop / status

# SDK worker processes (scripts/flink/sdk_worker_boot.py + its sdk_worker_main child) that
# outlived their TaskManager: found by the exact path of our boot script / work dir, killed by pid.
leftover_sdk_workers() {
  local d pid cmd
  for d in /proc/[0-9]*; do
    pid=${d#/proc/}
    cmd=$(tr '\0' ' ' <"$d/cmdline" 2>/dev/null) || continue
    if [[ $cmd == *"$SCRIPT_DIR/flink/sdk_worker_boot.py"* ]] ||
      { [[ $cmd == *apache_beam.runners.worker.sdk_worker_main* ]] &&
        tr '\0' '\n' <"$d/environ" 2>/dev/null | grep -qx "SEMI_PERSISTENT_DIRECTORY=$DATA_DIR/sdk-workers/.*"; }; then
      echo "$pid"
    fi
  done
}

cmd_stop() {
  # job server first (no new submissions), then Flink (running SDK workers lose their
  # control connection and exit), then the worker pool.
  stop_role expansion
  stop_role jobserver
  stop_workers
  stop_role jobmanager
  local pids
  pids=$(leftover_sdk_workers)
  if [[ -n $pids ]]; then
    log "terminating leftover SDK worker pids: $(echo $pids)"
    kill $pids 2>/dev/null || true
    sleep 2
    pids=$(leftover_sdk_workers)
    [[ -z $pids ]] || kill -KILL $pids 2>/dev/null || true
  fi
  log "stopped"
}

tm_ids() {
  rest_get /taskmanagers 2>/dev/null |
    "$PYTHON" -c 'import json,sys; print(" ".join(t["id"] for t in json.load(sys.stdin)["taskmanagers"]))' 2>/dev/null || true
}

cmd_restart_taskmanager() {
  local sig=TERM
  [[ ${1:-} == --kill ]] && sig=KILL
  [[ -n $(pid_of jobmanager) ]] || die "JobManager is not running; use start"
  local before t0=$SECONDS
  before=" $(tm_ids) "
  stop_role taskmanager "$sig"
  write_conf
  start_taskmanager
  # The killed TM stays listed until the JM notices (heartbeat / RPC failure); wait for a
  # TaskManager id that was not there before.
  local deadline=$((SECONDS + START_TIMEOUT)) id found=""
  while [[ -z $found ]]; do
    for id in $(tm_ids); do [[ $before == *" $id "* ]] || found=$id; done
    [[ -n $found ]] && break
    ((SECONDS < deadline)) || die "new TaskManager did not register (see $LOG_DIR/flink-taskmanager.log)"
    [[ -n $(pid_of taskmanager) ]] || die "new TaskManager died (see $LOG_DIR/flink-taskmanager.log / .out)"
    sleep 0.5
  done
  log "new TaskManager $found registered (pid $(pid_of taskmanager)) in $((SECONDS - t0)) s"
}

cmd_status() {
  local role pid rc=0
  for role in jobmanager $(worker_roles) jobserver expansion; do
    pid=$(pid_of "$role")
    if [[ -n $pid ]]; then printf '%-12s up    pid %s\n' "$role" "$pid"; else printf '%-12s down\n' "$role"; rc=3; fi
  done
  local p
  for p in "$REST_PORT:flink-rest" "$JOB_PORT:beam-job" "$ARTIFACT_PORT:beam-artifact" "$EXPANSION_PORT:beam-expansion"; do
    if port_open 127.0.0.1 "${p%%:*}"; then printf '%-15s :%s open\n' "${p#*:}" "${p%%:*}"; else printf '%-15s :%s closed\n' "${p#*:}" "${p%%:*}"; fi
  done
  local ov
  local i a
  for ((i = 1; i <= TM_COUNT; i++)); do
    a=$(pool_address "$i")
    if port_open "${a%:*}" "$POOL_PORT"; then printf '%-15s %s open\n' "$(pool_role "$i")" "$a"; else printf '%-15s %s closed\n' "$(pool_role "$i")" "$a"; fi
  done
  if ov=$(rest_get /overview 2>/dev/null); then echo "flink /overview: $ov"; fi
  return $rc
}

cmd_env() {
  cat <<EOF
export FLINK_REST=$HOST:$REST_PORT
export FLINK_MASTER=$HOST:$REST_PORT
export BEAM_JOB_ENDPOINT=localhost:$JOB_PORT
export BEAM_EXPANSION_SERVICE=localhost:$EXPANSION_PORT
export BEAM_WORKER_POOL=$POOL_NAME:$POOL_PORT
export FLINK_JOB_SERVER_JAR=$JOBSERVER_JAR
export FLINK_HOME=$FLINK_HOME
export FLINK_CHECKPOINT_DIR=$DATA_DIR/checkpoints
EOF
}

cmd_logs() {
  case "${1:-jobmanager}" in
    jobmanager|jm) tail -n 100 "$LOG_DIR/flink-jobmanager.log" ;;
    taskmanager|tm) tail -n 100 "$LOG_DIR/flink-taskmanager.log" ;;
    taskmanager-*) tail -n 100 "$LOG_DIR/flink-$1.log" ;;
    workerpool-*) tail -n 100 "$LOG_DIR/$1.log" ;;
    jobserver|js) tail -n 100 "$LOG_DIR/jobserver.log" ;;
    workerpool|wp) tail -n 100 "$LOG_DIR/workerpool.log" ;;
    expansion|exp) tail -n 100 "$LOG_DIR/expansion.log" ;;
    sdk) tail -n 100 "$LOG_DIR/sdk-workers.log" ;;
    *) die "unknown component $1" ;;
  esac
}

usage() { sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; }

main() {
  local cmd=${1:-}
  [[ $# -gt 0 ]] && shift
  case "$cmd" in
    install) cmd_install ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    env) cmd_env ;;
    restart-taskmanager) cmd_restart_taskmanager "$@" ;;
    kill-worker) cmd_kill_worker "$@" ;;
    logs) cmd_logs "$@" ;;
    -h|--help|help|"") usage ;;
    *) usage; die "unknown command '$cmd'" ;;
  esac
}

main "$@"
