#!/usr/bin/env bash
# loss.sh up|down: two network namespaces, qfb-a (client) and qfb-b (server, 10.99.0.2), joined
# by a veth pair; nftables in each namespace drops LOSS percent (default 1) of the packets it
# receives, TCP and UDP alike: LOSS% loss each way. (Drops are on input: a drop on output
# makes the sender's sendmsg fail with EPERM, which is not loss, and quic-go closes the
# connection.) Needs root, iproute2 and nftables (apt-get install nftables). Then run
# floorbench with:
#   -client-netns qfb-a -server-netns qfb-b -listen 10.99.0.2:0 -dial 10.99.0.2
set -euo pipefail
loss=${LOSS:-1}

down() {
	ip netns del qfb-a 2>/dev/null || true
	ip netns del qfb-b 2>/dev/null || true
}

up() {
	down
	ip netns add qfb-a
	ip netns add qfb-b
	ip link add qfb-va netns qfb-a type veth peer name qfb-vb netns qfb-b
	ip -n qfb-a addr add 10.99.0.1/24 dev qfb-va
	ip -n qfb-b addr add 10.99.0.2/24 dev qfb-vb
	for ns in qfb-a qfb-b; do
		ip -n "$ns" link set lo up
	done
	ip -n qfb-a link set qfb-va up
	ip -n qfb-b link set qfb-vb up
	if [ "$loss" != 0 ]; then
		for ns in qfb-a qfb-b; do
			ip netns exec "$ns" nft -f - <<-NFT
				table inet qfb {
					chain in { type filter hook input priority 0; numgen random mod 100 < $loss drop; }
				}
			NFT
		done
	fi
}

case "${1:-}" in
up) up ;;
down) down ;;
*)
	echo "usage: $0 up|down" >&2
	exit 2
	;;
esac
