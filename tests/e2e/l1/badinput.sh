# Bad input with real KVM: a corrupt or truncated kernel and a corrupt initrd are refused
# with exit code 1 and a message before the guest runs, and leave no socket or process
# behind.
. /e2e/common.sh
. /e2e/params
mkdir -p /run/iv
head -c 2000000 /dev/urandom >/tmp/garbage.bin
head -c 4096 "$KERNEL" >/tmp/truncated-vmlinux
head -c 65536 /dev/urandom >/tmp/garbage-initrd

# try TAG ARGS...: run the launcher in the foreground (timeout 60 s), record its exit code,
# its error message and what it left behind.
try() {
	tag=$1 name=bad-$(echo "$1" | tr '_' '-')
	shift
	rm -f /run/iv/$tag.api /run/iv/$tag.console
	timeout 60 "$LAUNCHER" --name "$name" --api-socket /run/iv/$tag.api \
		--console-socket /run/iv/$tag.console --memory-mib 128 "$@" \
		>/tmp/$tag.out 2>/tmp/$tag.err </dev/null
	rc=$?
	sed "s/^/$tag-err| /" /tmp/$tag.err
	fact "${tag}_rc" "$rc"
	# The error message from its first line on, as one line.
	fact "${tag}_error" "$(sed -n '/error:/,$p' /tmp/$tag.err | tr -d '\r' | tr '\n=' ' :')"
	# Leftovers: socket files / processes of this VM (a helper process may take a moment
	# to notice the launcher is gone: allow 5 s).
	for _ in $(seq 50); do
		[ -z "$(ls /run/iv/$tag.* 2>/dev/null)" ] && [ -z "$(procs_of "$name")" ] && break
		usleep 100000
	done
	fact "${tag}_left" "$(ls /run/iv/$tag.* 2>/dev/null | wc -l)/$(procs_of "$name" | wc -l)"
}

try garbage_kernel --kernel /tmp/garbage.bin --initrd "$INITRD"
try truncated_kernel --kernel /tmp/truncated-vmlinux --initrd "$INITRD"
try garbage_initrd --kernel "$KERNEL" --initrd /tmp/garbage-initrd --cmdline "$BASE_CMDLINE iv.bench"
exit 0
