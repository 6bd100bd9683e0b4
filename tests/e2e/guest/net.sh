# virtio-net: configure eth0, ping the L1 side of the tap, exchange a TCP message.
. /scenarios/lib.sh
set -u
token=$(iv_param iv.token)
fact eth0_present "$([ -d /sys/class/net/eth0 ] && echo yes || echo no)"
fact eth0_mac "$(cat /sys/class/net/eth0/address 2>/dev/null)"
ip addr add 172.30.0.2/24 dev eth0
ip link set eth0 up
fact eth0_up_rc $?
# The link may take a moment; retry the first ping a few times.
ok=no
for i in 1 2 3 4 5; do
	if ping -c 3 -W 2 172.30.0.1 >/tmp/ping.out 2>&1; then ok=yes; break; fi
done
cat /tmp/ping.out
fact ping "$ok"
reply=$(echo "guest-says-$token" | nc -w 10 172.30.0.1 5555)
fact tcp_reply "$reply"
