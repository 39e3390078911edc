#!/usr/bin/env bash
# compare.sh: upstream quic-go against the patched copy in third_party/quic-go, in one run.
#
# Builds floorbench twice in a scratch copy of the module (go.mod, go.sum, quic/): once with
# upstream quic-go (any replace dropped), once with `replace => third_party/quic-go`. Then
# runs ROUNDS rounds of every variant, rotating their order, and prints each run's line and the
# median of the main fields per variant.
#
#   ROUNDS=5 quic/floorbench/compare.sh [extra floorbench flags]
#   LOSS=1 quic/floorbench/compare.sh   # in network namespaces with 1% loss (loss.sh), c=1 only, no TCP
#
# ACK_DELAYS (default "1ms 5ms") are the -ack-delay values of the patched variants.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
rounds=${ROUNDS:-5}
ack_delays=${ACK_DELAYS:-1ms 5ms}
scratch=$(mktemp -d /tmp/qkas-floorbench.XXXXXX)
cleanup() {
	rm -rf "$scratch"
	if [ -n "${LOSS:-}" ]; then "$here/loss.sh" down; fi
}
trap cleanup EXIT

build() { # build NAME REPLACE_DIR|""
	local dir=$scratch/$1
	mkdir -p "$dir"
	cp "$repo/go.mod" "$repo/go.sum" "$dir/"
	cp -r "$repo/quic" "$dir/quic"
	(
		cd "$dir"
		go mod edit -dropreplace github.com/quic-go/quic-go
		if [ -n "$2" ]; then go mod edit -replace "github.com/quic-go/quic-go=$2"; fi
		go build -o "$scratch/floorbench-$1" ./quic/floorbench
	)
}
build upstream ""
build patched "$repo/third_party/quic-go"

flags=()
if [ -n "${LOSS:-}" ]; then
	LOSS=${LOSS} "$here/loss.sh" up
	# No TCP baseline: with loss it waits out 200ms timeouts and takes minutes.
	flags=(-client-netns qfb-a -server-netns qfb-b -listen 10.99.0.2:0 -dial 10.99.0.2 -c 0 -tcp=false)
fi
flags+=("$@")

variants=(
	"upstream|$scratch/floorbench-upstream"
	"upstream-maxstreams2^60|$scratch/floorbench-upstream -max-streams 1152921504606846976"
	"patched|$scratch/floorbench-patched"
)
for d in $ack_delays; do
	variants+=("patched-ack$d|$scratch/floorbench-patched -ack-delay $d")
done
out=$scratch/results
for ((r = 0; r < rounds; r++)); do
	for ((i = 0; i < ${#variants[@]}; i++)); do
		v=${variants[$(((i + r) % ${#variants[@]}))]}
		name=${v%%|*}
		# shellcheck disable=SC2086 # the command line is split on purpose
		${v#*|} -label "$name" "${flags[@]}" | tee -a "$out"
	done
done

echo
echo "medians over $rounds rounds:"
for v in "${variants[@]}"; do
	name=${v%%|*}
	grep "^$name " "$out" | awk -v name="$name" '
		{ for (i = 2; i <= NF; i++) { split($i, kv, "="); if (kv[2] ~ /^-?[0-9.]+$/) { vals[kv[1]] = vals[kv[1]] " " kv[2]; keys[kv[1]] = i } } }
		END {
			line = name
			n = split("c1_p50_us c1_p99_us c1_p999_us added_p50_us tcp_p99_us c1_cpu_us c1_dg load_cpu_us load_req_s load_dg", want, " ")
			for (k = 1; k <= n; k++) {
				key = want[k]
				if (!(key in vals)) continue
				m = split(substr(vals[key], 2), a, " ")
				for (x = 1; x <= m; x++) for (y = x + 1; y <= m; y++) if (a[y] + 0 < a[x] + 0) { t = a[x]; a[x] = a[y]; a[y] = t }
				med = (m % 2) ? a[(m + 1) / 2] : (a[m / 2] + a[m / 2 + 1]) / 2
				line = line " " key "=" med
			}
			print line
		}'
done
