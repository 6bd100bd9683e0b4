# Rate limits: time direct reads from the limited disk (vda) and the unlimited one (vdb),
# a download from L1 over the limited NIC (RX), then serve a blob to L1 (TX).
. /scenarios/lib.sh
set -u
now() { cut -d' ' -f1 /proc/uptime; }
span() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

read_disk() {
	t0=$(now)
	dd if="/dev/$1" of=/dev/null bs=65536 count="$2" iflag=direct 2>/tmp/dd.err
	rc=$?
	t1=$(now)
	fact "$1_read_rc" "$rc"
	fact "$1_read_seconds" "$(span "$t0" "$t1")"
	[ "$rc" = 0 ] || fact "$1_read_error" "$(head -n 1 /tmp/dd.err | tr ' ' '_')"
}
blocks=$(iv_param iv.blocks)
read_disk vda "$blocks"
read_disk vdb "$blocks"

fact ping "$(ping_l1)"

# busybox nc ends at the end of its standard input: hold a FIFO open so that it never
# comes, and the download ends when L1 closes the connection.
mkfifo /tmp/hold
exec 3<>/tmp/hold
t0=$(now)
nc 172.30.0.1 5556 </tmp/hold >/tmp/blob
rc=$?
t1=$(now)
fact rx_rc "$rc"
fact rx_bytes "$(wc -c </tmp/blob)"
fact rx_seconds "$(span "$t0" "$t1")"
rm -f /tmp/blob

# TX: serve the blob to the first connection, then end it.
dd if=/dev/zero bs=65536 count="$(iv_param iv.netblocks)" 2>/dev/null |
	timeout 400 nc -l -p 5557 >/dev/null
fact tx_served_rc "$?"
