# The launcher pod's compute container in nested KVM, without Kubernetes:
# `ironvisor-handler virt-launcher --backend kvm` as the launcher pod's user (107, no
# capability, as deploy/ and the controller run it), on a directory laid out as the pod's
# volumes are (vmi/vmi.json from the downward API, kernel/, sockets/), with /dev/kvm owned
# by that user as containerd hands it to the container
# (device_ownership_from_security_context). The KVM launcher it starts boots the guest;
# SIGTERM stops it gracefully and the termination message says so.
. /e2e/common.sh
. /e2e/params
HANDLER=/usr/local/bin/ironvisor-handler
POD=/pod
POD_UID=107

mkdir -p $POD/vmi $POD/container-disks $POD/kernel $POD/sockets
cp "$KERNEL" $POD/kernel/kernel
cp "$INITRD" $POD/kernel/initrd
cat >$POD/vmi/vmi.json <<EOF
{
  "apiVersion": "ironvisor.io/v1alpha1",
  "kind": "VirtualMachineInstance",
  "metadata": {"name": "podvm", "namespace": "default", "uid": "$VMI_UID"},
  "spec": {
    "domain": {
      "cpu": {"cores": 2},
      "memory": {"guest": "256Mi"},
      "firmware": {"kernelBoot": {
        "kernelArgs": "quiet iv.run=counter",
        "container": {"image": "ironvisor/guest-kernel:test",
                      "kernelPath": "/boot/vmlinuz", "initrdPath": "/boot/initrd.img"}
      }},
      "devices": {"autoattachPodInterface": false}
    },
    "terminationGracePeriodSeconds": 20
  }
}
EOF
: >$POD/termination-log
# The pod's user, and what the kubelet and containerd give it: the volumes (fsGroup) and
# the device plugins' /dev/kvm.
[ -f /etc/passwd ] || echo "root:x:0:0::/:/bin/sh" >/etc/passwd
echo "ironvisor:x:$POD_UID:$POD_UID::/:/bin/sh" >>/etc/passwd
echo "ironvisor:x:$POD_UID:" >>/etc/group
chown -R $POD_UID:$POD_UID $POD
chown $POD_UID:$POD_UID /dev/kvm
chmod 600 /dev/kvm

# busybox su, as root, asks for no password; it execs the shell, which execs the program.
su -s /bin/sh ironvisor -c "exec $HANDLER virt-launcher --vmi $POD/vmi/vmi.json \
	--container-disks $POD/container-disks --kernel-dir $POD/kernel --run-dir $POD/sockets \
	--launcher $LAUNCHER --launcher-qemu /nonexistent/ironvisor-launcher-qemu --backend kvm \
	--termination-log $POD/termination-log" </dev/null >/tmp/pod.console 2>/tmp/pod.err &
VM_PID=$!
if wait_for /tmp/pod.console "GUEST-COUNTER 3" 180; then
	fact guest_counting yes
else
	fact guest_counting no
	sed 's/^/pod-out| /' /tmp/pod.console | tail -n 40
	sed 's/^/pod-err| /' /tmp/pod.err
fi

# "comm=uid:gid:capeff:seccomp" for every thread of process $1.
identity() {
	for t in /proc/$1/task/*; do
		awk -v comm="$(cat $t/comm 2>/dev/null)" '
			/^Uid:/ { uid = ($2 == $3 && $3 == $4 && $4 == $5) ? $2 : "mixed" }
			/^Gid:/ { gid = ($2 == $3 && $3 == $4 && $4 == $5) ? $2 : "mixed" }
			/^CapEff:/ { cap = $2 }
			/^Seccomp:/ { sec = $2 }
			END { printf "%s=%s:%s:%s:%s ", comm, uid, gid, cap, sec }' $t/status 2>/dev/null
	done | sed 's/ $//'
}
# The KVM launcher is the child of virt-launcher whose command line has --config.
LAUNCHER_PID=
for d in /proc/[0-9]*; do
	[ "$(awk '/^PPid:/ { print $2 }' $d/status 2>/dev/null)" = "$VM_PID" ] || continue
	case "$(tr '\0' ' ' <$d/cmdline 2>/dev/null)" in
	*"--config "*) LAUNCHER_PID=${d#/proc/} ;;
	esac
done
fact virt_launcher_identity "$(identity "$VM_PID" | cut -d' ' -f1)"
fact launcher_identity "$(identity "$LAUNCHER_PID")"
fact launcher_uses_kvm "$(ls -l /proc/$LAUNCHER_PID/fd 2>/dev/null | grep -c /dev/kvm)"
fact launcher_exe "$(readlink /proc/$LAUNCHER_PID/exe 2>/dev/null)"
fact launch_config_backend "$(grep -o '"backend": *"[a-z_-]*"' $POD/sockets/launcher.json | head -n 1)"

kill -TERM "$VM_PID"
vm_wait 60
fact virt_launcher_rc "$VM_RC"
fact termination_message "$(cat $POD/termination-log)"
fact graceful_in_console "$(grep -c IRONVISOR-GUEST-GRACEFUL-SHUTDOWN /tmp/pod.console)"
sed 's/^/pod-err| /' /tmp/pod.err | tail -n 20
fact scenario_done yes
