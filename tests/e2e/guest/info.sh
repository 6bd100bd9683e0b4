# Boot check: report what the guest sees of its vCPUs, their topology, its memory and its
# real-time clock.
. /scenarios/lib.sh
fact nproc "$(nproc)"
fact cpus_online "$(cat /sys/devices/system/cpu/online)"
# Per CPU in number order, comma-separated: socket, core and SMT siblings.
per_cpu() {
	cpu=0
	out=
	while [ -d "/sys/devices/system/cpu/cpu$cpu" ]; do
		out="$out$(cat "/sys/devices/system/cpu/cpu$cpu/topology/$1"),"
		cpu=$((cpu + 1))
	done
	echo "${out%,}"
}
fact cpu_packages "$(per_cpu physical_package_id)"
fact cpu_cores "$(per_cpu core_id)"
fact cpu_siblings "$(per_cpu thread_siblings_list)"
fact mem_total_kb "$(awk '/^MemTotal:/ { print $2 }' /proc/meminfo)"
fact kernel "$(uname -r)"
fact cmdline_run "$(iv_param iv.run)"
fact rtc_name "$(cat /sys/class/rtc/rtc0/name 2>/dev/null)"
fact rtc_epoch "$(cat /sys/class/rtc/rtc0/since_epoch 2>/dev/null)"
