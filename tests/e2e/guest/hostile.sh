# A hostile guest: takes its second disk (vdb) and its NIC (eth0) away from the
# virtio-mmio driver and drives each device itself through /dev/mem, with rings in the
# BIOS hole below 1 MiB (the only guest memory /dev/mem may write): the disk's request
# queue, the NIC's transmit queue. Each attack starts from a device reset; after each, the
# device status is recorded. At the end the driver takes both back: the disk is read, and
# the NIC pings L1.
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

# attack_device LABEL PLATFORM QUEUE QUEUES: takes the device from its driver and runs
# every attack on its queue QUEUE.
attack_device() {
	DEV=$1 QUEUE=$3 QUEUES=$4
	BASE=$(printf '%d' "0x$(grep -m 1 " : $2\$" /proc/iomem | tr -d ' ' | cut -d- -f1)")
	fact "${DEV}_platform_device" "$2"
	fact "${DEV}_mmio_base" "$(printf '0x%x' "$BASE")"
	echo "$2" >/sys/bus/platform/drivers/virtio-mmio/unbind || { fact error "unbind_$DEV"; exit 0; }
	fact "${DEV}_unbound" yes
	for name in loop out_of_range huge_length next_out_of_queue avail_ahead storm \
		config_flood status_flood garbage_registers; do
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
STORM=$(iv_param iv.storm)
echo "HOSTILE-ATTACKS-BEGIN"
# The disk's request queue (its only one); the NIC's transmit queue (receive is 0).
attack_device blk "$blk" 0 1
attack_device net "$net" 1 2
echo "HOSTILE-ATTACKS-END"
# Time for L1 to look at the launcher before this guest ends.
sleep 3

# The driver takes both devices back: the disk is read, the NIC reaches L1.
echo "$blk" >/sys/bus/platform/drivers/virtio-mmio/bind
fact blk_rebind_rc $?
echo "$net" >/sys/bus/platform/drivers/virtio-mmio/bind
fact net_rebind_rc $?
i=0
while { [ ! -b /dev/vdb ] || [ ! -e /sys/class/net/eth0 ]; } && [ $i -lt 50 ]; do
	sleep 0.2
	i=$((i + 1))
done
dd if=/dev/vdb of=/tmp/vdb.head bs=4096 count=1 iflag=direct 2>/dev/null
fact vdb_read_rc $?
fact vdb_magic "$(head -c 8 /tmp/vdb.head)"
fact ping_after_rebind "$(ping_l1)"
