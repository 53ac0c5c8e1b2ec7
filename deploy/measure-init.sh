#!/usr/bin/env bash
# Init time of the Lambda binary outside Lambda: from exec to its "ready" log
# line (environment read, AWS SDK config loaded, clients built), i.e. the part
# of a cold start that is ours. Lambda adds the sandbox, the VPC attachment and
# the EFS mount on top. Prints each run and the median, in milliseconds.
#
#   CARGO_TARGET_DIR=target/lambda-watch cargo build --release -p lml-lambda --bin lml-lambda
#   deploy/measure-init.sh target/lambda-watch/release/lml-lambda
set -euo pipefail
bin=${1:?path to the lml-lambda binary}
runs=${RUNS:-21}
times=()
for _ in $(seq "$runs"); do
    start=$(date +%s%N)
    # Nothing listens on port 9: the runtime fails after "ready", which is all we time.
    AWS_LAMBDA_RUNTIME_API=127.0.0.1:9 AWS_LAMBDA_FUNCTION_NAME=lml AWS_LAMBDA_FUNCTION_MEMORY_SIZE=3538 \
        AWS_REGION=us-east-1 AWS_ACCESS_KEY_ID=x AWS_SECRET_ACCESS_KEY=x LML_TABLE=t LML_ROOT=/tmp \
        timeout 10 "$bin" 2>&1 | grep -m1 -q ready || true
    end=$(date +%s%N)
    times+=($(( (end - start) / 1000 )))
done
printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {printf "runs %d, median %.2f ms, min %.2f ms, max %.2f ms\n", NR, a[int((NR+1)/2)]/1000, a[1]/1000, a[NR]/1000}'
