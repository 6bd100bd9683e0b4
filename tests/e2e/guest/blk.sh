# virtio-blk: read a host-placed token from vda, write one back, and check that the
# read-only vdb refuses writes and reports its serial.
. /scenarios/lib.sh
set -u
token=$(iv_param iv.token)
mkdir -p /mnt/a /mnt/b

fact vda_present "$([ -b /dev/vda ] && echo yes || echo no)"
fact vda_size_sectors "$(cat /sys/block/vda/size 2>/dev/null)"
if mount -t ext4 /dev/vda /mnt/a; then
	fact vda_mounted yes
	fact vda_release "$(tr ' ' '_' </mnt/a/etc/ironvisor-release 2>/dev/null)"
	fact vda_host_file "$(cat /mnt/a/host-token.txt 2>/dev/null)"
	echo "guest-wrote-$token" >/mnt/a/guest-token.txt
	sync
	fact vda_write_rc $?
	umount /mnt/a
	fact vda_umount_rc $?
else
	fact vda_mounted no
fi

fact vdb_present "$([ -b /dev/vdb ] && echo yes || echo no)"
fact vdb_serial "$(cat /sys/block/vdb/serial 2>/dev/null)"
fact vdb_ro_flag "$(cat /sys/block/vdb/ro 2>/dev/null)"
# busybox mount falls back to read-only when the device is write-protected; either the
# rw mount fails or the result is a read-only mount.
if mount -t ext4 -o rw /dev/vdb /mnt/b 2>/tmp/mount.err; then
	opts=$(awk '$1 == "/dev/vdb" { print $4 }' /proc/mounts)
	fact vdb_rw_mount "mounted:${opts%%,*}"
	if (echo data >/mnt/b/should-fail) 2>/tmp/write.err; then
		fact vdb_file_write succeeded
	else
		fact vdb_file_write "failed:$(tr ' ' '_' </tmp/write.err)"
	fi
	umount /mnt/b
else
	fact vdb_rw_mount "refused:$(tr ' ' '_' </tmp/mount.err)"
fi
if dd if=/dev/zero of=/dev/vdb bs=4096 count=1 oflag=direct 2>/tmp/dd.err; then
	fact vdb_raw_write succeeded
else
	fact vdb_raw_write "failed:$(head -n 1 /tmp/dd.err | tr ' ' '_')"
fi
