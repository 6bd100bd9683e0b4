# A hostile guest: takes its second disk (vdb), its NIC (eth0), its entropy device and its
# virtio-console away from the virtio-mmio driver and drives each device itself through
# /dev/mem, with rings in the BIOS hole below 1 MiB (the only guest memory /dev/mem may
# write): the disk's request queue, the NIC's transmit and receive queues (L1 sends the NIC
# frames meanwhile), the entropy device's request queue, the console's transmit and
# receive queues. Each attack starts from a device reset; after each, the device status is
# recorded. At the end the driver takes every device back: the disk is read, the NIC pings
# L1, the entropy device serves bytes.
. /scenarios/lib.sh
set -u

# Virtio-mmio registers (virtio 1.x §4.2.2).
STATUS=0x70 DRV_FEAT=0x20 DRV_FEAT_SEL=0x24 QUEUE_SEL=0x30 QUEUE_NUM=0x38
QUEUE_READY=0x44 QUEUE_NOTIFY=0x50 DESC_LO=0x80 DESC_HI=0x84 AVAIL_LO=0x90 AVAIL_HI=0x94
USED_LO=0xa0 USED_HI=0xa4
NEEDS_RESET=64
# The rings and buffers: reserved guest memory between the EBDA and the ACPI tables. A
# second ring (the NIC's receive queue, left empty) lives above the first.
DESC=0xa0000 AVAIL=0xa1000 USED=0xa2000 DATA=0xa3000 IDLE_RING=0xa4000
NEXT=1 WRITE=2

w32() { devmem "$1" 32 "$2"; }
reg() { w32 $((BASE + $1)) "$2"; }
status() { printf '%d' "$(devmem $((BASE + STATUS)) 32)"; }

# desc INDEX ADDR_LO ADDR_HI LEN FLAGS NEXT
desc() {
	at=$((DESC + $1 * 16))
	w32 "$at" "$2"
	w32 $((at + 4)) "$3"
	w32 $((at + 8)) "$4"
	w32 $((at + 12)) $(($5 | ($6 << 16)))
}
# publish AVAIL_IDX HEAD: the head in the first ring slot, then the index, then notify.
publish() {
	w32 $((AVAIL + 4)) "$2"
	w32 "$AVAIL" $(($1 << 16))
	reg $QUEUE_NOTIFY "$QUEUE"
}

# ring QUEUE DESC AVAIL USED: queue QUEUE (8 entries) on those rings, empty.
ring() {
	w32 "$3" 0
	w32 "$4" 0
	reg $QUEUE_SEL "$1"
	reg $QUEUE_NUM 8
	reg $DESC_LO "$2"
	reg $DESC_HI 0
	reg $AVAIL_LO "$3"
	reg $AVAIL_HI 0
	reg $USED_LO "$4"
	reg $USED_HI 0
	reg $QUEUE_READY 1
}

# A driver's whole initialisation with VIRTIO_F_VERSION_1 only: the attacked queue
# ($QUEUE) on the first rings, any other queue ($QUEUES in all) on an empty one.
setup_queue() {
	reg $STATUS 0
	reg $STATUS 1
	reg $STATUS 3
	reg $DRV_FEAT_SEL 1
	reg $DRV_FEAT 1
	reg $DRV_FEAT_SEL 0
	reg $DRV_FEAT 0
	reg $STATUS 11
	q=0
	while [ $q -lt "$QUEUES" ]; do
		if [ $q = "$QUEUE" ]; then
			ring $q $DESC $AVAIL $USED
		else
			ring $q $IDLE_RING $((IDLE_RING + 0x200)) $((IDLE_RING + 0x400))
		fi
		q=$((q + 1))
	done
	reg $STATUS 15
}

# attack NAME: runs attack_NAME on a freshly set-up device; records the status after it.
attack() {
	setup_queue
	fact "${DEV}_ready_before_$1" "$(status)"
	"attack_$1"
	sleep 1
	fact "${DEV}_status_after_$1" "$(status)"
}

# A blk read request whose header is fine: type IN, sector 0.
header() {
	w32 "$DATA" 0
	w32 $((DATA + 4)) 0
	w32 $((DATA + 8)) 0
	w32 $((DATA + 12)) 0
}
# Two descriptors pointing at each other.
attack_loop() {
	header
	desc 0 $DATA 0 16 $NEXT 1
	desc 1 $((DATA + 0x100)) 0 512 $NEXT 0
	publish 1 0
}
# A header far outside guest memory.
attack_out_of_range() {
	desc 0 0xfffff000 0xffff 16 0 0
	publish 1 0
}
# A 4 GiB data buffer.
attack_huge_length() {
	header
	desc 0 $DATA 0 16 $NEXT 1
	desc 1 $((DATA + 0x100)) 0 0xffffffff $((NEXT | WRITE)) 2
	desc 2 $((DATA + 0x200)) 0 1 $WRITE 0
	publish 1 0
}
# A next index beyond the queue.
attack_next_out_of_queue() {
	header
	desc 0 $DATA 0 16 $NEXT 200
	publish 1 0
}
# An available index far more than a ring ahead.
attack_avail_ahead() {
	header
	desc 0 $DATA 0 16 0 0
	publish 0x8000 0
}
# Notifications as fast as this shell can write them, with nothing new in the ring.
attack_storm() {
	i=0
	while [ $i -lt "$STORM" ]; do
		reg $QUEUE_NOTIFY "$QUEUE"
		i=$((i + 1))
	done
}
# The same write to the read-only configuration space, over and over (each one a log
# line if the launcher did not limit them).
attack_config_flood() {
	i=0
	while [ $i -lt "$STORM" ]; do
		reg 0x100 $i
		i=$((i + 1))
	done
}
# Status changes a driver must not make, over and over: features without VERSION_1
# (refused), DRIVER_OK without FEATURES_OK, FAILED, reset.
attack_status_flood() {
	i=0
	while [ $i -lt $((STORM / 5)) ]; do
		reg $STATUS 0
		reg $STATUS 3
		reg $STATUS 11
		reg $STATUS 7
		reg $STATUS 131
		i=$((i + 1))
	done
}
# Random values in every register and the first words of the configuration space.
attack_garbage_registers() {
	off=0
	while [ $off -lt 512 ]; do
		reg $off $(((RANDOM << 16) | RANDOM))
		off=$((off + 4))
	done
}

# platform_of SYSFS_DEVICE_LINK: the virtio-mmio platform device behind a block or net
# device ("LNRO0005:01").
platform_of() {
	basename "$(dirname "$(readlink -f "$1")")"
}

# platform_of_driver DRIVER: the virtio-mmio platform device the virtio driver DRIVER
# (virtio_rng, virtio_console) is bound to; empty when it is bound to none.
platform_of_driver() {
	for dev in /sys/bus/virtio/drivers/"$1"/virtio*; do
		[ -e "$dev" ] && platform_of "$dev" && return
	done
}

# take_device LABEL PLATFORM: takes the device from its driver; its registers are at BASE.
take_device() {
	BASE=$(printf '%d' "0x$(grep -m 1 " : $2\$" /proc/iomem | tr -d ' ' | cut -d- -f1)")
	fact "${1}_platform_device" "$2"
	fact "${1}_mmio_base" "$(printf '0x%x' "$BASE")"
	echo "$2" >/sys/bus/platform/drivers/virtio-mmio/unbind || { fact error "unbind_$1"; exit 0; }
	fact "${1}_unbound" yes
}

# The attacks on a queue, and those on the device as a whole (run once per device).
QUEUE_ATTACKS="loop out_of_range huge_length next_out_of_queue avail_ahead storm"
DEVICE_ATTACKS="config_flood status_flood garbage_registers"

# attack_queue LABEL QUEUE QUEUES [DEVICE_TOO]: every queue attack on queue QUEUE of the
# device at BASE (which has QUEUES queues), with DEVICE_TOO the device attacks as well,
# then a reset; facts are named after LABEL.
attack_queue() {
	DEV=$1 QUEUE=$2 QUEUES=$3
	names=$QUEUE_ATTACKS
	[ -n "${4:-}" ] && names="$names $DEVICE_ATTACKS"
	for name in $names; do
		attack "$name"
	done
	reg $STATUS 0
	fact "${DEV}_status_after_reset" "$(status)"
}

command -v devmem >/dev/null || { fact error no_devmem; exit 0; }
[ -e /sys/block/vdb/device ] || { fact error no_vdb; exit 0; }
[ -e /sys/class/net/eth0/device ] || { fact error no_eth0; exit 0; }
blk=$(platform_of /sys/block/vdb/device)
net=$(platform_of /sys/class/net/eth0/device)
rng=$(platform_of_driver virtio_rng)
console=$(platform_of_driver virtio_console)
[ -n "$rng" ] || { fact error no_rng; exit 0; }
[ -n "$console" ] || { fact error no_virtio_console; exit 0; }
STORM=$(iv_param iv.storm)
echo "HOSTILE-ATTACKS-BEGIN"
# The disk's request queue (its only one).
take_device blk "$blk"
attack_queue blk 0 1 device
# The NIC's transmit queue, then its receive queue while L1 sends it frames.
take_device net "$net"
attack_queue net 1 2 device
echo "HOSTILE-RX-BEGIN"
attack_queue netrx 0 2
echo "HOSTILE-RX-END"
# The entropy device's request queue (its only one).
take_device rng "$rng"
attack_queue rng 0 1 device
# The console port's transmit queue, then its receive queue (no multiport: two queues).
take_device console "$console"
attack_queue console 1 2 device
attack_queue consolerx 0 2
echo "HOSTILE-ATTACKS-END"
# Time for L1 to look at the launcher before this guest ends.
sleep 3

# The driver takes both devices back: the disk is read, the NIC reaches L1.
echo "$blk" >/sys/bus/platform/drivers/virtio-mmio/bind
fact blk_rebind_rc $?
echo "$net" >/sys/bus/platform/drivers/virtio-mmio/bind
fact net_rebind_rc $?
echo "$rng" >/sys/bus/platform/drivers/virtio-mmio/bind
fact rng_rebind_rc $?
echo "$console" >/sys/bus/platform/drivers/virtio-mmio/bind
fact console_rebind_rc $?
i=0
while { [ ! -b /dev/vdb ] || [ ! -e /sys/class/net/eth0 ]; } && [ $i -lt 50 ]; do
	sleep 0.2
	i=$((i + 1))
done
dd if=/dev/vdb of=/tmp/vdb.head bs=4096 count=1 iflag=direct 2>/dev/null
fact vdb_read_rc $?
fact vdb_magic "$(head -c 8 /tmp/vdb.head)"
fact ping_after_rebind "$(ping_l1)"
i=0
while [ ! -e /dev/hwrng ] && [ $i -lt 50 ]; do
	sleep 0.2
	i=$((i + 1))
done
fact rng_current_after_rebind "$(cat /sys/class/misc/hw_random/rng_current)"
fact rng_bytes_after_rebind "$(head -c 64 /dev/hwrng | wc -c | tr -d ' ')"
