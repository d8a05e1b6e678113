#!/usr/bin/env bash
# bench/peers/run.sh: the one command for the side-by-side comparison of
# tsstore with NATS JetStream and etcd on this machine. See README.md.
#
#   bench/peers/run.sh                               # full run (1M events, 10 s workloads)
#   EVENTS=100000 DURATION=10s bench/peers/run.sh    # a quick run, a few minutes
#   EVENTS=1000000,10000000 bench/peers/run.sh       # also replay a 10M-event log
#
# Settings (environment):
#   EVENTS         log sizes loaded and replayed (d), cumulative     [1000000]
#   STREAM_EVENTS  events of the stream replayed alone (e)           [100000]
#   DURATION       length of a, b, c and of each steady phase of f   [10s]
#   SIZE           payload bytes per event                           [256]
#   PRODUCERS      concurrent producers in b and f                   [64]
#   WINDOW         events in flight in c                             [1024]
#   FAILOVERS      leader kills in f (the median is reported)        [5]
#   WORKLOADS      which of a,b,c,d,e,f,g to run                     [all]
#   SYSTEMS        which systems, in table order   [tsstore,nats-default,nats-sync-always,etcd]
#   DIR            where the clusters keep their data                [a temp dir, removed at exit]
#   OUT            where the reports and tables go  [bench/peers/results/<UTC time>]
#   KEEP=1         keep DIR at exit
#   NATS_VERSION   nats-server version to go install                 [v2.15.2]
#   NATS_PORT, ETCD_PORT  first of the loopback port ranges          [14221, 12379]
#   TSSTORE_BIN    a tsstore binary to use instead of building one
#   TSSTORE_SRC=head  build tsstore from the last commit, not the work tree
#   TSSTORE_SPLIT=0   one tsstore bench invocation for all workloads (default:
#                  replay d,e,g and append a,b,c,f on separate fresh clusters)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
HERE=$ROOT/bench/peers
TOOLS=$ROOT/.tools/bin
EVENTS=${EVENTS:-1000000}
STREAM_EVENTS=${STREAM_EVENTS:-100000}
DURATION=${DURATION:-10s}
SIZE=${SIZE:-256}
PRODUCERS=${PRODUCERS:-64}
WINDOW=${WINDOW:-1024}
WORKLOADS=${WORKLOADS:-a,b,c,d,e,f,g}
FAILOVERS=${FAILOVERS:-5}
SYSTEMS=${SYSTEMS:-tsstore,nats-default,nats-sync-always,etcd}
NATS_VERSION=${NATS_VERSION:-v2.15.2}
NATS_PORT=${NATS_PORT:-14221}
ETCD_PORT=${ETCD_PORT:-12379}
KEEP=${KEEP:-0}
OUT=${OUT:-$HERE/results/$(date -u +%Y%m%dT%H%M%SZ)}
if [[ -z ${DIR:-} ]]; then
	DIR=$(mktemp -d /tmp/tsstore-peers.XXXXXX)
else
	mkdir -p "$DIR"
	KEEP=1
fi
mkdir -p "$OUT" "$TOOLS"

log() { printf 'run.sh: %s\n' "$*" >&2; }

# Every server this script starts is in PIDS; the EXIT trap kills what
# is left of them by PID. Each has DIR in its command line, and a PID is
# only signalled while that holds (so a reused PID is left alone).
PIDS=()
ours() { running "$1" && tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -qF "$DIR/"; }
cleanup() {
	local rc=$? p f
	for f in "$DIR"/*.restarted; do
		[[ -f $f ]] && while read -r p; do PIDS+=("$p"); done <"$f"
	done
	for p in "${PIDS[@]}"; do
		if ours "$p"; then kill -KILL "$p" 2>/dev/null || true; fi
	done
	wait 2>/dev/null || true
	if [[ $KEEP != 1 ]]; then rm -rf "$DIR"; fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# running PID: the process exists and is not a zombie.
running() { [[ -r /proc/$1/stat ]] && [[ $(cut -d')' -f2 "/proc/$1/stat" 2>/dev/null) != " Z"* ]]; }

# stop_pids PID... stops processes with SIGTERM, then SIGKILL after 10 s,
# and drops them from PIDS.
stop_pids() {
	local p i
	for p in "$@"; do
		if ours "$p"; then kill -TERM "$p" 2>/dev/null || true; fi
	done
	for p in "$@"; do
		for ((i = 0; i < 100; i++)); do
			ours "$p" || break
			sleep 0.1
		done
		if ours "$p"; then kill -KILL "$p" 2>/dev/null || true; fi
		for i in "${!PIDS[@]}"; do
			if [[ ${PIDS[$i]} == "$p" ]]; then unset 'PIDS[i]'; fi
		done
	done
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

check_ports() {
	local p
	for p in "$@"; do
		if port_busy "$p"; then
			log "port 127.0.0.1:$p is in use; set NATS_PORT / ETCD_PORT"
			exit 1
		fi
	done
}

wants() { [[ ,$SYSTEMS, == *,$1,* ]]; }

# --- installs ---------------------------------------------------------------

# etcd comes from Debian (etcd-server, etcd-client). The package would
# start a systemd service: a policy-rc.d that forbids starts is in place
# during the install, and the unit is disabled after it.
install_etcd() {
	if command -v etcd >/dev/null; then return; fi
	if [[ $(id -u) != 0 ]]; then
		log "etcd is not installed; run as root, or: apt-get install -y --no-install-recommends etcd-server etcd-client"
		exit 1
	fi
	local made=0
	if [[ ! -e /usr/sbin/policy-rc.d ]]; then
		printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
		chmod +x /usr/sbin/policy-rc.d
		made=1
	fi
	apt-get update -q
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends etcd-server etcd-client
	if [[ $made == 1 ]]; then rm -f /usr/sbin/policy-rc.d; fi
	systemctl disable --now etcd >/dev/null 2>&1 || true
}

# nats-server is go-installed at a pinned version: Debian bookworm's 2.9.10
# rejects `sync_interval` (added in 2.10), which nats-sync-always needs,
# and both NATS columns should run the same server.
install_nats() {
	NATS=${NATS_BIN:-$TOOLS/nats-server}
	if [[ -x $NATS ]] && "$NATS" --version | grep -q "${NATS_VERSION#v}\$"; then return; fi
	log "go install github.com/nats-io/nats-server/v2@$NATS_VERSION"
	(cd "$HERE/peerbench" && GOBIN=$TOOLS GOFLAGS=-buildvcs=false go install "github.com/nats-io/nats-server/v2@$NATS_VERSION")
	NATS=$TOOLS/nats-server
}

# build makes peerbench and, unless TSSTORE_BIN names one, tsstore: from the
# work tree, or from the last commit (git archive HEAD) when the work tree
# does not build (other work in progress) or TSSTORE_SRC=head.
build() {
	log "building peerbench"
	(cd "$HERE/peerbench" && go build -o "$TOOLS/peerbench" .)
	if ! wants tsstore; then return; fi
	if [[ -n ${TSSTORE_BIN:-} ]]; then
		TSSTORE=$TSSTORE_BIN
		return
	fi
	TSSTORE=$TOOLS/tsstore
	if [[ ${TSSTORE_SRC:-worktree} == worktree ]]; then
		log "building tsstore from the work tree"
		if (cd "$ROOT" && go build -o "$TSSTORE" ./cmd/tsstore); then return; fi
		log "the work tree does not build"
	fi
	log "building tsstore from HEAD ($(git -C "$ROOT" rev-parse --short HEAD))"
	mkdir -p "$DIR/src"
	git -C "$ROOT" archive HEAD | tar -x -C "$DIR/src"
	if ! (cd "$DIR/src" && go build -o "$TSSTORE" ./cmd/tsstore); then
		log "tsstore does not build; its column will be n/a"
		TSSTORE=""
	fi
	rm -rf "$DIR/src"
}

# --- tsstore ----------------------------------------------------------------

# only WANTED OF...: the workloads of OF (comma lists) that WANTED names.
only() {
	local w out=""
	for w in ${2//,/ }; do
		if [[ ,$1, == *,$w,* ]]; then out+="$w,"; fi
	done
	printf '%s' "${out%,}"
}

# tsstore bench runs twice, each time on a fresh local cluster: the replay
# workloads (d, e, g) on a log that holds only the loaded events, as the
# peers do, then the append workloads (a, b, c, f); peerbench merge joins
# the two reports. TSSTORE_SPLIT=0 runs all workloads in one invocation
# (then d replays, and g measures, a log that a, b and c started).
run_tsstore() {
	local ts=$TSSTORE part wl parts=() i=0
	if [[ -z $ts ]]; then return 1; fi
	if [[ ${TSSTORE_SPLIT:-1} == 1 ]]; then
		parts=("$(only "$WORKLOADS" d,e,g)" "$(only "$WORKLOADS" a,b,c,f)")
	else
		parts=("$WORKLOADS")
	fi
	local files=()
	for wl in "${parts[@]}"; do
		[[ -z $wl ]] && continue
		i=$((i + 1))
		log "tsstore: bench --workloads $wl (its own three-node cluster under $DIR/tsstore)"
		"$ts" bench --local "$DIR/tsstore" --json "$OUT/tsstore-$i.json" --workloads "$wl" \
			--duration "$DURATION" --events "$EVENTS" --stream-events "$STREAM_EVENTS" --size "$SIZE" \
			--producers "$PRODUCERS" --failovers "$FAILOVERS" --window "$WINDOW" \
			--plots "$OUT/plots" 2>&1 | tee -a "$OUT/tsstore.txt" >&2
		rm -rf "${DIR:?}/tsstore"
		if [[ -f $OUT/tsstore-$i.json ]]; then files+=("$OUT/tsstore-$i.json"); fi
	done
	if [[ ${#files[@]} == 0 ]]; then return 1; fi
	"$TOOLS/peerbench" merge "$OUT/tsstore.json" "${files[@]}"
}

# --- peers ------------------------------------------------------------------

NODES=""
CLUSTER=()

# start_nats NAME SYNC: three JetStream servers n1..n3 on loopback; SYNC is
# "default" or "always" (sync_interval: always).
start_nats() {
	local name=$1 sync=$2 d=$DIR/$1 i routes="" js_sync=""
	local cp=$NATS_PORT rp=$((NATS_PORT + 100))
	check_ports $cp $((cp + 1)) $((cp + 2)) $rp $((rp + 1)) $((rp + 2))
	[[ $sync == always ]] && js_sync="sync_interval: always"
	for i in 0 1 2; do routes+="nats-route://127.0.0.1:$((rp + i)), "; done
	NODES="" ENDPOINTS="" CLUSTER=()
	for i in 1 2 3; do
		mkdir -p "$d/n$i"
		cat >"$d/n$i.conf" <<EOF
server_name: n$i
listen: 127.0.0.1:$((cp + i - 1))
jetstream {
  store_dir: "$d/n$i"
  max_memory_store: 1G
  max_file_store: 200G
  $js_sync
}
cluster {
  name: peerbench
  listen: 127.0.0.1:$((rp + i - 1))
  routes: [${routes%, }]
}
EOF
		"$NATS" -c "$d/n$i.conf" >"$d/n$i.log" 2>&1 &
		PIDS+=($!) CLUSTER+=($!)
		disown $! # no job notice when f kills it; stop_pids polls /proc
		NODES+="n$i=$!:$d/n$i,"
		ENDPOINTS+="nats://127.0.0.1:$((cp + i - 1)),"
	done
	ENDPOINTS=${ENDPOINTS%,}
}

# start_etcd: three members n1..n3 on loopback. 8 GiB backend quota (the
# default 2 GiB is too small for a 10M-event log); other settings default:
# every write's WAL entry is fsynced on a majority before the ack.
start_etcd() {
	local d=$DIR/etcd i cluster=""
	local cp=$ETCD_PORT pp=$((ETCD_PORT + 100))
	check_ports $cp $((cp + 1)) $((cp + 2)) $pp $((pp + 1)) $((pp + 2))
	for i in 1 2 3; do cluster+="n$i=http://127.0.0.1:$((pp + i - 1)),"; done
	NODES="" ENDPOINTS="" CLUSTER=()
	mkdir -p "$d"
	for i in 1 2 3; do
		etcd --name "n$i" --data-dir "$d/n$i" \
			--listen-client-urls "http://127.0.0.1:$((cp + i - 1))" --advertise-client-urls "http://127.0.0.1:$((cp + i - 1))" \
			--listen-peer-urls "http://127.0.0.1:$((pp + i - 1))" --initial-advertise-peer-urls "http://127.0.0.1:$((pp + i - 1))" \
			--initial-cluster "${cluster%,}" --initial-cluster-state new --initial-cluster-token peerbench \
			--quota-backend-bytes $((8 << 30)) --logger zap --log-outputs stderr --log-level warn \
			>"$d/n$i.log" 2>&1 &
		PIDS+=($!) CLUSTER+=($!)
		disown $! # no job notice when f kills it; stop_pids polls /proc
		NODES+="n$i=$!:$d/n$i,"
		ENDPOINTS+="http://127.0.0.1:$((cp + i - 1)),"
	done
	ENDPOINTS=${ENDPOINTS%,}
}

# peerbench SYSTEM SERVER SYNC: runs the workloads against the started cluster.
peerbench() {
	local sys=$1 server=$2 sync=$3
	log "$sys: peerbench against $ENDPOINTS"
	"$TOOLS/peerbench" run --system "$sys" --endpoints "$ENDPOINTS" --nodes "${NODES%,}" \
		--workloads "$WORKLOADS" --duration "$DURATION" --events "$EVENTS" --stream-events "$STREAM_EVENTS" \
		--size "$SIZE" --producers "$PRODUCERS" --window "$WINDOW" --failovers "$FAILOVERS" \
		--pidfile "$DIR/$sys.restarted" \
		--config "server=$server" --config "sync=$sync" --json "$OUT/$sys.json"
}

run_peer() {
	local sys=$1 rc=0
	case $sys in
	nats-default)
		start_nats "$sys" default
		peerbench "$sys" "$("$NATS" --version)" "sync_interval default (2m): acknowledged before fsync" || rc=$?
		;;
	nats-sync-always)
		start_nats "$sys" always
		peerbench "$sys" "$("$NATS" --version)" "sync_interval: always (fsync every write before ack)" || rc=$?
		;;
	etcd)
		start_etcd
		peerbench etcd "etcd $(etcd --version | awk '/etcd Version/ {print $3}')" "WAL fsync before ack (default)" || rc=$?
		;;
	*)
		log "unknown system $sys"
		return
		;;
	esac
	# f restarts killed nodes; peerbench listed their new PIDs.
	if [[ -f $DIR/$sys.restarted ]]; then
		local p
		while read -r p; do PIDS+=("$p") CLUSTER+=("$p"); done <"$DIR/$sys.restarted"
		rm -f "$DIR/$sys.restarted"
	fi
	stop_pids "${CLUSTER[@]}"
	local f
	for f in "$DIR/$sys"/*.log; do cp "$f" "$OUT/$sys-${f##*/}"; done
	rm -rf "${DIR:?}/$sys"
	if [[ $rc != 0 ]]; then log "$sys: peerbench failed ($rc); its rows will be partial or n/a"; fi
}

# --- main -------------------------------------------------------------------

log "results in $OUT, data under $DIR"
if wants etcd; then install_etcd; fi
if wants nats-default || wants nats-sync-always; then install_nats; fi
build
reports=()
for sys in ${SYSTEMS//,/ }; do
	if [[ $sys == tsstore ]]; then
		run_tsstore || log "tsstore bench failed; its rows will be n/a"
		rm -rf "${DIR:?}/tsstore"
	else
		run_peer "$sys"
	fi
	if [[ -f $OUT/$sys.json ]]; then reports+=("$OUT/$sys.json"); fi
done
if [[ ${#reports[@]} == 0 ]]; then
	log "no reports"
	exit 1
fi
"$TOOLS/peerbench" compare --markdown "${reports[@]}" >"$OUT/table.md"
"$TOOLS/peerbench" compare "${reports[@]}" | tee "$OUT/table.txt"
log "reports, logs and tables in $OUT"
