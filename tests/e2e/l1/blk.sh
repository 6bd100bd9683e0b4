# virtio-blk: a read-write data disk and a read-only disk with a serial number.
. /e2e/common.sh
. /e2e/params
vm_start blk /tmp/blk "iv.run=blk iv.token=$TOKEN" --vcpus 1 --memory-mib 256 \
	--disk "id=data,path=/guest/data.ext4" \
	--disk "id=rodisk,path=/guest/rootfs.ext4,ro=on,serial=$RO_SERIAL"
vm_wait 240
show /tmp/blk
fact vm_rc "$VM_RC"
# What the guest wrote must be on the image once the VMM is gone.
fact debugfs_guest_token "$($DEBUGFS -R 'cat /guest-token.txt' /guest/data.ext4 2>/dev/null)"
fact rodisk_sha256 "$(sha256sum /guest/rootfs.ext4 | cut -d' ' -f1)"
