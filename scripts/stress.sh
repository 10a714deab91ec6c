#!/usr/bin/env bash
# The long reliability runs (as root): hundreds of SIGKILLed ADDs (bridge and host-local) with
# their DELs, many rounds of interleaved parallel ADD/DEL/GC, and 300 parallel ADDs while the
# store's lock file is removed every few milliseconds; cluster-ipam at the issue's counts (10
# nodes x 1,000 parallel ADDs, 300 ADDs under leader kills, 200 kill -9 rounds) and the cluster
# store's kill and leader-kill rounds. `make test` runs the same tests
# bounded to about a minute; this runs them for real.
#   SWCNI_FAULT_RUNS      killed bridge ADDs (host-local: twice as many); default 400
#   SWCNI_FAULT_SECONDS   time limit per fault test; default 900
#   SWCNI_FAULTS_REFERENCE=1  also run the reference plugins (/usr/lib/cni), for comparison only
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-/usr/bin/python3}
export SWCNI_STRESS=1
exec "$PYTHON" -m pytest -q -s -p no:cacheprovider integration/test_faults.py integration/test_concurrency.py \
    integration/test_store_faults.py integration/test_cluster_ipam.py integration/test_cluster_store.py "$@"
