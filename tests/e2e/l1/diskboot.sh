# Boot the Debian guest disk the way a VM without kernelBoot boots: no --kernel, only
# --boot-disk. The launcher reads the kernel, initrd and command line from the disk's own
# GRUB configuration and boots them; Debian reads the NoCloud seed (second disk), applies
# its userData and reaches a login prompt on the serial console. Its NIC is a tap in L1
# where dnsmasq answers its DHCP (cloud-init's fallback network configuration); L1 logs in
# with ssh and the key userData installed, timed from the launcher's start. Then a
# graceful stop.
. /e2e/common.sh
. /e2e/params
[ -x "$LAUNCHER" ] || fail "no launcher at $LAUNCHER"
: >/tmp/disk.console
: >/tmp/disk.err
$IP tuntap add dev tap0 mode tap || fail "ip tuntap add tap0 failed"
$IP addr add 172.30.0.1/24 dev tap0 || fail "ip addr add failed"
$IP link set tap0 up || fail "ip link set tap0 up failed"
/usr/sbin/dnsmasq --no-daemon --user=root --interface=tap0 --bind-interfaces --port=0 \
	--dhcp-range=172.30.0.2,172.30.0.2,12h --dhcp-host="$MAC,172.30.0.2" \
	--dhcp-leasefile=/tmp/dnsmasq.leases --pid-file= --conf-file=/dev/null \
	>/tmp/dnsmasq.log 2>&1 &
DNSMASQ_PID=$!
cp /e2e/id_ed25519 /tmp/id && chmod 600 /tmp/id
t0=$(now_ms)
"$LAUNCHER" --name diskboot --vcpus 2 --memory-mib 512 --stdio \
	--disk id=root,path=/e2e/debian.qcow2,format=qcow2 \
	--disk id=seed,path=/e2e/seed.img,ro=on \
	--net "id=net0,tap=tap0,mac=$MAC" \
	--boot-disk root --firmware "$FIRMWARE" \
	>/tmp/disk.console 2>/tmp/disk.err </dev/null &
VM_PID=$!
echo "L1: started diskboot (pid $VM_PID) booting disk root ($FIRMWARE)"
wait_for /tmp/disk.console 'login:' 400 && fact login_ms $(($(now_ms) - t0))
wait_for /tmp/disk.console 'IRONVISOR-CLOUD-INIT-RUNCMD' 120 && fact runcmd_ms $(($(now_ms) - t0))
# The first login that works: sshd may start after the login prompt.
tries=0
while [ $tries -lt 60 ]; do
	if /usr/bin/ssh -i /tmp/id -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
		-o BatchMode=yes -o ConnectTimeout=5 debian@172.30.0.2 \
		'echo "ssh-user=$(id -un) ssh-host=$(hostname)"' >/tmp/ssh.out 2>/tmp/ssh.err; then
		fact ssh_ms $(($(now_ms) - t0))
		fact ssh_said "$(cat /tmp/ssh.out)"
		break
	fi
	tries=$((tries + 1))
	sleep 2
done
[ -s /tmp/ssh.out ] || { echo "L1: ssh never worked:"; cat /tmp/ssh.err; cat /tmp/dnsmasq.log; }
kill -TERM "$VM_PID" 2>/dev/null
vm_wait 120
show /tmp/disk
kill "$DNSMASQ_PID" 2>/dev/null
fact vm_rc "$VM_RC"
