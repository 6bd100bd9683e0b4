# Rate limits: a disk limited to $DISK_BPS bytes/s beside an unlimited one, and a NIC
# limited to $NET_BPS bytes/s in each direction. The guest times its reads and a download
# from L1 (RX); L1 times a download from the guest (TX). Both ends use busybox nc.
. /e2e/common.sh
. /e2e/params
now() { cut -d' ' -f1 /proc/uptime; }
span() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

for disk in limited free; do
	dd if=/dev/zero of=/tmp/$disk.img bs=1048576 count=0 seek=16 2>/dev/null ||
		fail "cannot make /tmp/$disk.img"
done
$IP tuntap add dev tap0 mode tap || fail "ip tuntap add tap0 failed"
$IP addr add 172.30.0.1/24 dev tap0 || fail "ip addr add failed"
$IP link set tap0 up || fail "ip link set tap0 up failed"
# RX: one connection that gets the blob, then end of file (busybox nc exits at the end of
# its standard input and closes the connection once the kernel sent what it holds).
dd if=/dev/zero bs=65536 count="$NET_BLOCKS" 2>/dev/null | nc -l -p 5556 >/dev/null &
# nc also ends at the end of its standard input: hold a FIFO open so that it never comes.
mkfifo /tmp/hold || fail "mkfifo failed"
exec 3<>/tmp/hold

vm_start ratelimit /tmp/rl "iv.run=ratelimit iv.blocks=$DISK_BLOCKS iv.netblocks=$NET_BLOCKS" \
	--vcpus 1 --memory-mib 256 \
	--disk "id=limited,path=/tmp/limited.img,bps=$DISK_BPS" \
	--disk "id=free,path=/tmp/free.img" \
	--net "id=net0,tap=tap0,mac=$MAC,bps=$NET_BPS"

# TX: connect to the guest's listener until it answers, and time that download.
got=0
i=0
while [ $i -lt 400 ] && kill -0 "$VM_PID" 2>/dev/null; do
	t0=$(now)
	nc -w 3 172.30.0.2 5557 </tmp/hold >/tmp/from-guest 2>/dev/null
	t1=$(now)
	got=$(wc -c </tmp/from-guest)
	[ "$got" -gt 0 ] && break
	sleep 1
	i=$((i + 1))
done
fact tx_bytes "$got"
fact tx_seconds "$(span "$t0" "$t1")"
vm_wait 300
show /tmp/rl
fact vm_rc "$VM_RC"
