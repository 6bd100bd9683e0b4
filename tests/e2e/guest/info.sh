# Boot check: report what the guest sees of its vCPUs, its memory and its real-time clock
# device (/init prints the CPU topology and the RTC's time: IRONVISOR-GUEST-MACHINE).
. /scenarios/lib.sh
fact nproc "$(nproc)"
fact cpus_online "$(cat /sys/devices/system/cpu/online)"
fact mem_total_kb "$(awk '/^MemTotal:/ { print $2 }' /proc/meminfo)"
fact kernel "$(uname -r)"
fact cmdline_run "$(iv_param iv.run)"
fact rtc_name "$(cat /sys/class/rtc/rtc0/name 2>/dev/null)"
