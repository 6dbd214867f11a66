#!/usr/bin/env bash
# The full-size fault run of the e2e suite: 1,000 messages among 3 clients and
# 5 file uploads while the relay is SIGKILLed at random moments and restarted;
# checks that every acknowledged message is shown exactly once and every file
# arrives byte for byte. Takes a few minutes. The schedule's seed is printed;
# replay a run with the same seed:
#
#   scripts/sigkill-storm.sh [SEED]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -gt 0 ]; then
    export SOTTO_FAULT_SEED=$1
fi
cargo test --release -p sotto-tests --test e2e sigkill_storm_full_size \
    -- --ignored --nocapture
