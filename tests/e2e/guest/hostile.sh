# A hostile guest: takes its second disk (vdb) away from the virtio-mmio driver and drives
# the device itself through /dev/mem, with rings in the BIOS hole below 1 MiB (the only
# guest memory /dev/mem may write). Each attack starts from a device reset; after each,
# the device status is recorded. At the end the driver takes the disk back and reads it.
. /scenarios/lib.sh
set -u

# Virtio-mmio registers (virtio 1.x §4.2.2).
STATUS=0x70 DRV_FEAT=0x20 DRV_FEAT_SEL=0x24 QUEUE_SEL=0x30 QUEUE_NUM=0x38
QUEUE_READY=0x44 QUEUE_NOTIFY=0x50 DESC_LO=0x80 DESC_HI=0x84 AVAIL_LO=0x90 AVAIL_HI=0x94
USED_LO=0xa0 USED_HI=0xa4
NEEDS_RESET=64
# The rings and buffers: reserved guest memory between the EBDA and the ACPI tables.
DESC=0xa0000 AVAIL=0xa1000 USED=0xa2000 DATA=0xa3000
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
# publish AVAIL_IDX HEAD: the head in the first ring slot, then the index.
publish() {
	w32 $((AVAIL + 4)) "$2"
	w32 "$AVAIL" $(($1 << 16))
	reg $QUEUE_NOTIFY 0
}

# A driver's whole initialisation of queue 0 (8 entries) with VIRTIO_F_VERSION_1 only.
setup_queue() {
	reg $STATUS 0
	w32 "$AVAIL" 0
	w32 "$USED" 0
	reg $STATUS 1
	reg $STATUS 3
	reg $DRV_FEAT_SEL 1
	reg $DRV_FEAT 1
	reg $DRV_FEAT_SEL 0
	reg $DRV_FEAT 0
	reg $STATUS 11
	reg $QUEUE_SEL 0
	reg $QUEUE_NUM 8
	reg $DESC_LO $DESC
	reg $DESC_HI 0
	reg $AVAIL_LO $AVAIL
	reg $AVAIL_HI 0
	reg $USED_LO $USED
	reg $USED_HI 0
	reg $QUEUE_READY 1
	reg $STATUS 15
}

# attack NAME: runs attack_NAME on a freshly set-up device; records the status after it.
attack() {
	setup_queue
	fact "ready_before_$1" "$(status)"
	"attack_$1"
	sleep 1
	fact "status_after_$1" "$(status)"
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
		reg $QUEUE_NOTIFY 0
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

command -v devmem >/dev/null || { fact error no_devmem; exit 0; }
device=$(readlink -f /sys/block/vdb/device) || { fact error no_vdb; exit 0; }
platform=$(basename "$(dirname "$device")")
BASE=$(printf '%d' "0x$(grep -m 1 " : $platform\$" /proc/iomem | tr -d ' ' | cut -d- -f1)")
STORM=$(iv_param iv.storm)
fact platform_device "$platform"
fact mmio_base "$(printf '0x%x' "$BASE")"
echo "$platform" >/sys/bus/platform/drivers/virtio-mmio/unbind || { fact error unbind; exit 0; }
fact unbound yes
echo "HOSTILE-ATTACKS-BEGIN"

for name in loop out_of_range huge_length next_out_of_queue avail_ahead storm config_flood \
	status_flood garbage_registers; do
	attack "$name"
done
reg $STATUS 0
fact status_after_reset "$(status)"
echo "HOSTILE-ATTACKS-END"
# Time for L1 to look at the launcher before this guest ends.
sleep 3

# The driver takes the device back and reads the disk.
echo "$platform" >/sys/bus/platform/drivers/virtio-mmio/bind
fact rebind_rc $?
i=0
while [ ! -b /dev/vdb ] && [ $i -lt 50 ]; do
	sleep 0.2
	i=$((i + 1))
done
dd if=/dev/vdb of=/tmp/vdb.head bs=4096 count=1 iflag=direct 2>/dev/null
fact vdb_read_rc $?
fact vdb_magic "$(head -c 8 /tmp/vdb.head)"
