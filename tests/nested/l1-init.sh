#!/bin/sh
# /init of the nested-KVM harness's L1 VM (installed by tests/nested/l1.py).
# Loads KVM, checks /dev/kvm, runs /scenario.sh, prints NESTED-L1-EXIT=<rc>, powers off.

export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root TERM=dumb

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm /tmp /run
mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t tmpfs -o mode=0755 tmpfs /run
echo "NESTED-L1-INIT uptime=$(cut -d' ' -f1 /proc/uptime)"

# The base modules, then the run's extra ones (L1Spec.modules), if any, each with the
# parameters /etc/nested/module-params gives its file name ("kvm-amd npt=0").
for list in /etc/nested/modules /etc/nested/modules.extra; do
	[ -f "$list" ] || continue
	while read -r ko; do
		[ -n "$ko" ] || continue
		file=${ko##*/}
		params=
		[ -f /etc/nested/module-params ] &&
			params=$(sed -n "s/^${file%.ko} //p" /etc/nested/module-params)
		# shellcheck disable=SC2086 # params is a list of name=value words
		insmod "$ko" $params || echo "NESTED-L1-WARNING: insmod $ko $params failed"
	done <"$list"
done
echo "NESTED-L1-KVM nested_paging=$(cat /sys/module/kvm_amd/parameters/npt 2>/dev/null)"

# What a Debian system also has: the cgroup v2 hierarchy and /var/run -> /run.
if [ -d /sys/fs/cgroup ] && grep -q cgroup2 /proc/filesystems; then
	mount -t cgroup2 cgroup2 /sys/fs/cgroup || echo "NESTED-L1-WARNING: cannot mount cgroup2"
fi
if [ ! -e /var/run ]; then
	mkdir -p /var && ln -s /run /var/run
fi

finish() {
	echo "NESTED-L1-EXIT=$1"
	sync
	poweroff -f
}

if [ ! -c /dev/kvm ]; then
	echo "NESTED-L1-ERROR: /dev/kvm is missing after loading kvm_amd: the L1 CPU has no usable SVM."
	echo "NESTED-L1-ERROR: boot L1 with '-cpu EPYC,+svm,+npt'. Kernel messages:"
	dmesg | grep -i -E 'kvm|svm' | tail -n 20
	finish 125
fi

ip link set lo up
cd /tmp || finish 126
echo "NESTED-L1-SCENARIO-START uptime=$(cut -d' ' -f1 /proc/uptime) cpus=$(nproc)"
sh /scenario.sh </dev/null
finish $?
