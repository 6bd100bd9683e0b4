# Boot check: report what the guest sees of its vCPUs and memory.
. /scenarios/lib.sh
fact nproc "$(nproc)"
fact cpus_online "$(cat /sys/devices/system/cpu/online)"
fact mem_total_kb "$(awk '/^MemTotal:/ { print $2 }' /proc/meminfo)"
fact kernel "$(uname -r)"
fact cmdline_run "$(iv_param iv.run)"
