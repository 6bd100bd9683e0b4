# Standalone node mode for real: ironvisor-handler (KVM backend) with the real CNI
# plugins, nftables, dnsmasq and the guest image catalogue; driven with virtctl.
#   1. apply examples/vm-dedicated.yaml -> Running with an IP, KVM launcher, the vCPU
#      thread pinned to its dedicated CPU
#   2. the serial console through `virtctl console`: boot log, typed commands, DHCP and
#      traffic from the guest to L1 through the CNI network
#   3. stop / start / restart
#   4. handler restart (SIGTERM, then SIGKILL): the launcher survives and is re-adopted
#   5. delete: no tap, veth, netns, lease, process, socket or VM directory left
# Facts: L1-FACT k=v. Installed by tests/e2e/test_standalone_kvm.py.
. /e2e/common.sh
. /e2e/params

HANDLER=/usr/local/bin/ironvisor-handler
VIRTCTL=/usr/local/bin/virtctl
LAUNCHER=/usr/local/bin/ironvisor-launcher
DATA=/var/lib/ironvisor
RUN=/run/ironvisor
SOCK=$RUN/handler.sock
IMAGES=/images
VM=dedicated
# firmware.uuid and firmware.serial given to the VM; the guest reads them from SMBIOS.
GUEST_UUID=6a1c7d1e-8b3f-4c5a-9e2d-0123456789ab
GUEST_SERIAL=CRM-0042
# clock.timezone given to the VM; the guest reads its RTC.
GUEST_TIMEZONE=Asia/Kolkata
BRIDGE_IP=10.222.0.1
export IRONVISOR_SOCKET=$SOCK
ESC=$(printf '\033')

# ---------------------------------------------------------------- helpers

now_s() { cut -d. -f1 /proc/uptime; }

# step NAME: a section header in the log.
step() { echo "L1: ===== $* ($(now_ms) ms)"; }

# Everything useful when something goes wrong.
dump() {
	echo "L1: ----- diagnostics: $*"
	echo "L1: --- virtctl get"; $VIRTCTL get 2>&1
	echo "L1: --- virtctl describe $VM"; $VIRTCTL describe $VM 2>&1
	echo "L1: --- launcher log"; $VIRTCTL logs $VM 2>&1 | tail -n 60
	echo "L1: --- processes"; ps -o pid,ppid,args 2>/dev/null | grep -v ' \[' | tail -n 40
	echo "L1: --- links"; $IP -br link 2>&1
	echo "L1: --- netns"; $IP netns list 2>&1
	for f in "$DATA"/net/iv-*/dnsmasq.log; do
		[ -f "$f" ] && { echo "L1: --- $f"; tail -n 30 "$f"; }
	done
	echo "L1: --- handler log (last 120 lines)"; sed "s/$ESC\[[0-9;]*m//g" /tmp/handler.log | tail -n 120
	echo "L1: --- dmesg (last 30 lines)"; dmesg | tail -n 30
}

die() {
	echo "L1-ERROR: $*"
	dump "$*"
	exit 1
}

# A column of the `virtctl get` row of the VM (3 STATUS, 4 PHASE, 5 IP, 8 BACKEND).
col() { $VIRTCTL get $VM 2>/dev/null | awk -v c="$1" 'NR == 2 { print $c }'; }

# The launcher pid from `virtctl describe` (empty without a running instance).
launcher_pid() {
	$VIRTCTL describe $VM 2>/dev/null | sed -n 's/^ *Launcher PID: *\([0-9][0-9]*\).*/\1/p' | head -n 1
}

# wait_until TIMEOUT_S CMD...: polls CMD every 0.25 s; 1 on timeout.
wait_until() {
	deadline=$(($(now_s) + $1))
	shift
	while ! "$@"; do
		[ "$(now_s)" -lt "$deadline" ] || return 1
		usleep 250000
	done
	return 0
}

is_running() { [ "$(col 3)" = Running ] && [ "$(col 4)" = Running ] && [ -n "$(launcher_pid)" ]; }
is_stopped() { [ "$(col 3)" = Stopped ]; }
is_gone() { ! $VIRTCTL get $VM >/dev/null 2>&1; }
running_with_new_pid() { is_running && [ "$(launcher_pid)" != "$1" ]; }
api_up() { [ -S "$SOCK" ] && $VIRTCTL get >/dev/null 2>&1; }

# Pids whose command line (args joined by spaces) matches the glob $1 (this shell and
# its subshells excluded).
procs_with() {
	for d in /proc/[0-9]*; do
		p=${d#/proc/}
		[ "$p" = "$$" ] && continue
		cmd=$(tr '\0' ' ' <"$d/cmdline" 2>/dev/null)
		# shellcheck disable=SC2254
		case "$cmd" in
		*/scenario.sh*) ;;
		$1) echo "$p" ;;
		esac
	done | tr '\n' ' ' | sed 's/ $//'
}
LAUNCHER_GLOB="$LAUNCHER *"
MONITOR_GLOB="* monitor --status-file*"
DNSMASQ_GLOB="dnsmasq --conf-file*"

alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }

# wait_in FILE PATTERN TIMEOUT_S: polls until grep finds PATTERN.
wait_in() {
	deadline=$(($(now_s) + $3))
	while ! grep -q "$2" "$1" 2>/dev/null; do
		[ "$(now_s)" -lt "$deadline" ] || return 1
		usleep 200000
	done
	return 0
}

start_handler() {
	NO_COLOR=1 IRONVISOR_LOG=${IRONVISOR_LOG:-info} "$HANDLER" serve --backend kvm --data-dir "$DATA" \
		--images-dir "$IMAGES" --run-dir "$RUN" --socket "$SOCK" --launcher "$LAUNCHER" \
		>>/tmp/handler.log 2>&1 </dev/null &
	HPID=$!
	echo "L1: handler started (pid $HPID)"
	wait_until 60 api_up || die "the handler API did not come up within 60 s"
}

# console_open NAME: `virtctl console` in the background, input from a fifo on fd 3,
# output in /tmp/NAME.out.
console_open() {
	rm -f /tmp/$1.in
	mkfifo /tmp/$1.in
	$VIRTCTL console $VM --timeout "$2" </tmp/$1.in >/tmp/$1.out 2>/tmp/$1.err &
	CON_PID=$!
	exec 3>/tmp/$1.in
}

# type LINE: one line typed on the console.
type_line() {
	printf '%s\n' "$1" >&3
	usleep 300000
}

# wait_booted NAME: a console session until the guest's /init reports (the console
# replays the boot log, so this also works for a guest that booted earlier); sets
# BOOTED_MS (when the marker was seen) and GUEST_INIT_S (the guest kernel's timestamp of
# "Run /init").
wait_booted() {
	console_open "$1" 150
	BOOTED_MS=timeout
	wait_in /tmp/$1.out IRONVISOR-GUEST-INFO 120 && BOOTED_MS=$(now_ms)
	console_close "$1" >/dev/null
	GUEST_INIT_S=$(sed -n 's/^\[ *\([0-9.]*\)\] Run \/init as init process.*/\1/p' /tmp/$1.out | tail -n 1)
}

# console_close NAME: Ctrl+] detaches; sets CON_RC.
console_close() {
	printf '\035' >&3
	(sleep 20; kill "$CON_PID" 2>/dev/null) &
	dog=$!
	wait "$CON_PID"
	CON_RC=$?
	kill "$dog" 2>/dev/null
	exec 3>&-
	sed "s/^/console($1)| /" /tmp/$1.out
	sed "s/^/console($1)-err| /" /tmp/$1.err
}

# ---------------------------------------------------------------- node setup
step "node setup"
# iptables on Debian is iptables-nft: the multi-call binary under the names it answers to.
for name in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
	ln -sf /usr/sbin/xtables-nft-multi /usr/sbin/$name
done
# dnsmasq drops its privileges to nobody.
grep -q '^nobody:' /etc/passwd || echo 'nobody:x:65534:65534:nobody:/nonexistent:/bin/false' >>/etc/passwd
grep -q '^nogroup:' /etc/group || echo 'nogroup:x:65534:' >>/etc/group
mkdir -p "$DATA" "$RUN" /run/netns
mount -t tmpfs -o size=1g,mode=0755 tmpfs "$DATA" || fail "cannot mount a tmpfs on $DATA"
fact cgroup2 "$([ -f /sys/fs/cgroup/cgroup.controllers ] && echo yes || echo no)"
fact iptables_version "$(/usr/sbin/iptables --version 2>&1)"
fact modules_loaded "$(cut -d' ' -f1 /proc/modules | sort | tr '\n' ',' | sed 's/,$//')"
[ -f "$IMAGES/ironvisor/guest-kernel/debian-6.1/boot/vmlinuz" ] || fail "no guest kernel in $IMAGES"
# A listener on the node for the guest to reach (served once the bridge exists).
mkdir -p /tmp/www
echo "l1-says-$TOKEN" >/tmp/www/token.txt
httpd -p 8080 -h /tmp/www || fail "busybox httpd did not start"

start_handler

# ---------------------------------------------------------------- 1. apply
step "1. apply"
t_apply=$(now_ms)
# The example with KubeVirt's firmware identity added (SMBIOS system UUID and serial), a
# virtio-rng device (`devices.rng: {}`) and a clock in a time zone (the guest's RTC keeps
# Asia/Kolkata's local time, UTC+5:30).
awk '/^        devices:$/ { print "        clock:"; print "          timezone: '"$GUEST_TIMEZONE"'" }
	{ print }
	/^        firmware:$/ { print "          uuid: '"$GUEST_UUID"'"; print "          serial: '"$GUEST_SERIAL"'" }
	/^        devices:$/ { print "          rng: {}" }' \
	/e2e/vm-dedicated.yaml >/tmp/vm-dedicated.yaml
if $VIRTCTL apply -f /tmp/vm-dedicated.yaml >/tmp/apply.out 2>&1; then apply_rc=0; else apply_rc=$?; fi
fact apply_rc "$apply_rc"
fact apply_output "$(tr '\n' ' ' </tmp/apply.out | head -c 300)"
[ "$apply_rc" -eq 0 ] || die "virtctl apply failed ($apply_rc): $(cat /tmp/apply.out)"
if wait_until 120 is_running; then
	t_running=$(now_ms)
	fact apply_to_running_ms $((t_running - t_apply))
else
	fact apply_to_running_ms timeout
	die "VM $VM did not reach Running within 120 s"
fi
$VIRTCTL get $VM
fact get_status "$(col 3)"
fact get_phase "$(col 4)"
fact get_ip "$(col 5)"
fact get_backend "$(col 8)"
$VIRTCTL describe $VM | tee /tmp/describe1.txt
fact describe_backend "$(sed -n 's/^ *Backend: *//p' /tmp/describe1.txt | head -n 1)"
PID1=$(launcher_pid)
fact launcher_pid_1 "$PID1"
fact launcher_exe_1 "$(readlink /proc/$PID1/exe 2>/dev/null)"
fact launcher_uses_kvm "$(ls -l /proc/$PID1/fd 2>/dev/null | grep -c /dev/kvm)"
fact launcher_cgroup "$(cut -d: -f3 /proc/$PID1/cgroup 2>/dev/null)"
# ... which holds it to its guest memory and vCPUs plus a bounded overhead.
CG=/sys/fs/cgroup$(cut -d: -f3 /proc/$PID1/cgroup 2>/dev/null)
fact cgroup_memory_max "$(cat $CG/memory.max 2>/dev/null)"
fact cgroup_pids_max "$(cat $CG/pids.max 2>/dev/null)"
fact cgroup_memory_current "$(cat $CG/memory.current 2>/dev/null)"
fact cgroup_pids_current "$(cat $CG/pids.current 2>/dev/null)"
fact launcher_netns "$($IP netns identify "$PID1" 2>/dev/null)"
# The CPUs each launcher thread may run on ("vcpu0=1 tokio-runtime-w=0-1 ...").
thread_cpus() {
	for t in /proc/$1/task/*; do
		printf '%s=%s ' "$(cat $t/comm 2>/dev/null)" \
			"$(sed -n 's/^Cpus_allowed_list:[[:space:]]*//p' $t/status 2>/dev/null)"
	done | sed 's/ $//'
}
fact launcher_thread_cpus "$(thread_cpus "$PID1")"
# Every thread of the launcher runs under its seccomp filter (2: filter mode).
thread_seccomp() {
	for t in /proc/$1/task/*; do
		printf '%s=%s ' "$(cat $t/comm 2>/dev/null)" \
			"$(sed -n 's/^Seccomp:[[:space:]]*//p' $t/status 2>/dev/null)"
	done | sed 's/ $//'
}
fact launcher_thread_seccomp "$(thread_seccomp "$PID1")"
# ... as the launcher's own unprivileged user (from the node agent's --launcher-uid-base),
# every id of it, with no capability: "comm=uid:gid:capeff".
thread_identity() {
	for t in /proc/$1/task/*; do
		awk -v comm="$(cat $t/comm 2>/dev/null)" '
			/^Uid:/ { uid = ($2 == $3 && $3 == $4 && $4 == $5) ? $2 : "mixed" }
			/^Gid:/ { gid = ($2 == $3 && $3 == $4 && $4 == $5) ? $2 : "mixed" }
			/^CapEff:/ { cap = $2 }
			END { printf "%s=%s:%s:%s ", comm, uid, gid, cap }' $t/status 2>/dev/null
	done | sed 's/ $//'
}
fact launcher_thread_identity "$(thread_identity "$PID1")"
# ... never root: started jailed by its monitor as that user (its first log line says
# which user it started as; the monitor says it jailed it).
LAUNCHER_LOG=$(find "$DATA" -name launcher.log | head -n 1)
fact launcher_start_ids "$(sed -n 's/.*launcher starting uid=\([0-9]*\) euid=\([0-9]*\).*/\1:\2/p' "$LAUNCHER_LOG" | head -n 1)"
fact launcher_jailed_line "$(grep -o 'launcher started jailed as uid [0-9]* gid [0-9]*, never root' "$LAUNCHER_LOG" | head -n 1)"
# ... in its own mount namespace whose root holds only the VM's files at their host paths.
fact launcher_root_top "$(ls -A /proc/"$PID1"/root | tr '\n' ' ' | sed 's/ $//')"
fact launcher_root_files "$(cd /proc/"$PID1"/root && find . ! -type d | sort | tr '\n' ' ' | sed 's/ $//')"
fact launcher_kvm_node "$(stat -c %u:%g:%a /proc/"$PID1"/root/dev/kvm 2>/dev/null)"
fact launcher_own_mount_ns "$([ "$(readlink /proc/"$PID1"/ns/mnt)" != "$(readlink /proc/self/ns/mnt)" ] && echo yes || echo no)"
fact dedicated_event "$($VIRTCTL describe $VM | grep -o 'vCPUs pinned to dedicated host CPUs [0-9,-]*' | tail -n 1)"
fact netns_list "$($IP netns list | awk '{ print $1 }' | tr '\n' ' ' | sed 's/ $//')"

# ---------------------------------------------------------------- 2. console
step "2. console"
console_open con1 150
if wait_in /tmp/con1.out IRONVISOR-GUEST-INIT-REACHED 90; then
	t_boot=$(now_ms)
	fact console_init_reached yes
	fact apply_to_guest_init_ms $((t_boot - t_apply))
else
	fact console_init_reached no
	echo "L1: --- console output"; cat /tmp/con1.out
	die "the guest's boot never showed on the console"
fi
wait_in /tmp/con1.out IRONVISOR-GUEST-INFO 60 || echo "L1: no IRONVISOR-GUEST-INFO on the console"
sleep 1
# Commands typed on the console; results come back on it.
type_line ''
type_line 'echo CONSOLE-TYPED-$((6*7))'
# A udhcpc script that configures what the handler's dnsmasq offers.
type_line "printf '%s\\n' '#!/bin/sh' '[ \"\$1\" = bound ] || exit 0' 'ip addr add \$ip/\$mask dev \$interface' 'ip link set \$interface mtu \${mtu:-1500}' 'ip route add default via \$router' 'echo DHCP-BOUND ip=\$ip mask=\$mask router=\$router' >/tmp/dhcp.sh; chmod +x /tmp/dhcp.sh"
# (Markers are typed as X""-Y so that the echo of the typed line does not match X-Y.)
type_line 'ip link set eth0 up; udhcpc -i eth0 -n -q -t 10 -T 2 -s /tmp/dhcp.sh; echo UDHCPC""-RC=$?'
wait_in /tmp/con1.out 'UDHCPC-RC=' 60 || {
	echo "L1: --- console output"; cat /tmp/con1.out
	die "udhcpc did not finish in the guest"
}
type_line "ip -4 addr show dev eth0 | grep -o 'inet [0-9./]*' | sed 's/^/GUEST""-ADDR=/'"
# (Each answer ends with ';': the echo of the next typed line can follow it on the line.)
type_line 'echo GUEST""-DMI=$(cat /sys/class/dmi/id/sys_vendor)/$(cat /sys/class/dmi/id/product_uuid)/$(cat /sys/class/dmi/id/product_serial)";"'
type_line 'echo GUEST""-RNG=$(cat /sys/class/misc/hw_random/rng_current)/$(head -c 4096 /dev/hwrng | wc -c | tr -d " ")";"'
type_line 'echo GUEST""-RTC=$(cat /sys/class/rtc/rtc0/since_epoch)";"'
wait_in /tmp/con1.out 'GUEST-RTC=[0-9]' 30 || echo "L1: the guest's RTC did not answer"
fact l1_epoch_at_rtc "$(date +%s)"
type_line "ping -c 3 -W 3 $BRIDGE_IP >/dev/null && echo GUEST\"\"-PING=ok || echo GUEST\"\"-PING=fail"
wait_in /tmp/con1.out 'GUEST-PING=' 30 || echo "L1: ping did not finish"
# (busybox 1.35's wget crashes with -T: timeout bounds it instead.)
type_line "echo GUEST\"\"-WGET=\$(timeout 20 wget -q -O - http://$BRIDGE_IP:8080/token.txt)"
wait_in /tmp/con1.out 'GUEST-WGET=' 30 || echo "L1: wget did not finish"
# The other way: L1 -> pod IP is DNATed to the guest by the masquerade binding.
POD_IP=$(col 5)
if ping -c 2 -W 3 "$POD_IP" >/dev/null 2>&1; then fact l1_ping_pod_ip ok; else fact l1_ping_pod_ip fail; fi
console_close con1
fact console_rc "$CON_RC"
fact console_kernel_banner "$(grep -c 'Linux version' /tmp/con1.out)"
fact guest_kernel_init_s "$(sed -n 's/^\[ *\([0-9.]*\)\] Run \/init as init process.*/\1/p' /tmp/con1.out | tail -n 1)"
fact console_typed "$(grep -o 'CONSOLE-TYPED-[0-9]*' /tmp/con1.out | grep -v 'CONSOLE-TYPED-$' | tail -n 1)"
fact guest_dhcp "$(grep -o 'DHCP-BOUND.*' /tmp/con1.out | tail -n 1 | tr -d '\r')"
fact guest_addr "$(grep -o 'GUEST-ADDR=inet [0-9./]*' /tmp/con1.out | tail -n 1 | sed 's/GUEST-ADDR=inet //')"
fact guest_dmi "$(grep -o 'GUEST-DMI=[^;]*;' /tmp/con1.out | tail -n 1 | sed 's/GUEST-DMI=//; s/;$//')"
fact guest_rng "$(grep -o 'GUEST-RNG=[^;]*;' /tmp/con1.out | tail -n 1 | sed 's/GUEST-RNG=//; s/;$//')"
fact guest_rtc_epoch "$(grep -o 'GUEST-RTC=[0-9]*;' /tmp/con1.out | tail -n 1 | sed 's/GUEST-RTC=//; s/;$//')"
fact guest_ping "$(grep -o 'GUEST-PING=[a-z]*' /tmp/con1.out | grep -v '=$' | tail -n 1 | cut -d= -f2)"
fact guest_wget "$(grep -o 'GUEST-WGET=[A-Za-z0-9-]*' /tmp/con1.out | tail -n 1 | cut -d= -f2)"
$VIRTCTL logs $VM >/tmp/logs1.txt 2>&1
fact logs_rc $?
fact logs_lines "$(wc -l </tmp/logs1.txt)"
sed 's/^/logs| /' /tmp/logs1.txt | head -n 20
for f in "$DATA"/net/iv-*/dnsmasq.log; do
	[ -f "$f" ] && sed 's/^/dnsmasq| /' "$f" | tail -n 12
done

# ---------------------------------------------------------------- 3. stop/start/restart
step "3. stop"
t0=$(now_ms)
$VIRTCTL stop $VM || die "virtctl stop failed"
if wait_until 90 is_stopped; then fact stop_ms $(($(now_ms) - t0)); else fact stop_ms timeout; dump "stop"; fi
fact stopped_status "$(col 3)"
wait_until 10 sh -c "! kill -0 $PID1 2>/dev/null"
fact stopped_launcher_alive "$(alive "$PID1" && echo yes || echo no)"
fact stopped_launchers "$(procs_with "$LAUNCHER_GLOB")"
fact stopped_monitors "$(procs_with "$MONITOR_GLOB")"

step "3. start"
t0=$(now_ms)
$VIRTCTL start $VM || die "virtctl start failed"
if wait_until 120 running_with_new_pid "$PID1"; then fact start_ms $(($(now_ms) - t0)); else fact start_ms timeout; dump "start"; fi
fact started_status "$(col 3)"
PID2=$(launcher_pid)
fact launcher_pid_2 "$PID2"
wait_booted boot2
fact start_to_guest_booted_ms $((BOOTED_MS - t0))
fact guest_kernel_init_2_s "$GUEST_INIT_S"

step "3. restart"
t0=$(now_ms)
$VIRTCTL restart $VM || die "virtctl restart failed"
if wait_until 120 running_with_new_pid "$PID2"; then fact restart_ms $(($(now_ms) - t0)); else fact restart_ms timeout; dump "restart"; fi
fact restarted_status "$(col 3)"
PID3=$(launcher_pid)
fact launcher_pid_3 "$PID3"
fact ip_3 "$(col 5)"
wait_booted boot3
fact restart_to_guest_booted_ms $((BOOTED_MS - t0))
fact restart_old_launcher_alive "$(alive "$PID2" && echo yes || echo no)"
fact restarted_launchers "$(procs_with "$LAUNCHER_GLOB" | wc -w)"
fact restart_stop_detail "$($VIRTCTL describe $VM | grep 'Stopped ' | tail -n 1 | sed 's/.*stopped: //')"

# ---------------------------------------------------------------- 4. handler restart
step "4. handler SIGTERM"
kill -TERM "$HPID"
wait "$HPID"
fact handler_sigterm_rc $?
fact after_sigterm_launcher_alive "$(alive "$PID3" && echo yes || echo no)"
start_handler
wait_until 60 is_running || dump "not Running after the handler restart"
fact readopt_term_status "$(col 3)"
fact readopt_term_pid "$(launcher_pid)"

step "4. handler SIGKILL"
kill -KILL "$HPID"
wait "$HPID" 2>/dev/null
fact after_sigkill_launcher_alive "$(alive "$PID3" && echo yes || echo no)"
start_handler
wait_until 60 is_running || dump "not Running after the handler was killed"
fact readopt_kill_status "$(col 3)"
fact readopt_kill_pid "$(launcher_pid)"
fact readopt_kill_ip "$(col 5)"
# The console still works through the new daemon.
console_open con2 40
usleep 500000
type_line ''
type_line 'echo READOPTED-CONSOLE-$((7*6))'
wait_in /tmp/con2.out 'READOPTED-CONSOLE-42' 20
console_close con2
fact readopt_console "$(grep -c 'READOPTED-CONSOLE-42' /tmp/con2.out)"
$VIRTCTL describe $VM | tail -n 15

# ---------------------------------------------------------------- 5. delete
step "5. delete"
NETNS=$($IP netns list | awk '/^iv-/ { print $1 }' | head -n 1)
UIDS=$(ls "$RUN/vmi" 2>/dev/null | tr '\n' ' ')
fact before_netns "$NETNS"
fact before_tap "$($IP -n "$NETNS" -br link 2>/dev/null | awk '{ print $1 }' | grep -c '^tap0')"
fact before_veth "$($IP -br link show type veth 2>/dev/null | wc -l)"
fact before_leases "$(ls "$DATA/net/ipam/ironvisor" 2>/dev/null | grep -c '^[0-9][0-9.]*$')"
fact before_dnsmasq "$(procs_with "$DNSMASQ_GLOB" | wc -w)"
fact before_rundir "$UIDS"
t0=$(now_ms)
$VIRTCTL delete $VM || die "virtctl delete failed"
if wait_until 90 is_gone; then fact delete_ms $(($(now_ms) - t0)); else fact delete_ms timeout; dump "delete"; fi
sleep 1
fact after_get "$($VIRTCTL get $VM >/dev/null 2>&1 && echo found || echo notfound)"
fact after_netns "$($IP netns list | wc -l)"
fact after_tap "$($IP -br link 2>/dev/null | grep -c tap)"
fact after_veth "$($IP -br link show type veth 2>/dev/null | wc -l)"
fact after_leases "$(ls "$DATA/net/ipam/ironvisor" 2>/dev/null | grep -c '^[0-9][0-9.]*$')"
fact after_net_state "$(ls -d "$DATA"/net/iv-* 2>/dev/null | wc -l)"
fact after_launchers "$(procs_with "$LAUNCHER_GLOB" | wc -w)"
fact after_monitors "$(procs_with "$MONITOR_GLOB" | wc -w)"
fact after_dnsmasq "$(procs_with "$DNSMASQ_GLOB" | wc -w)"
fact after_rundir "$(ls -A "$RUN/vmi" 2>/dev/null | wc -l)"
fact after_sockets "$(find "$RUN" -type s ! -path "$SOCK" 2>/dev/null | wc -l)"
fact after_vmdir "$([ -e "$DATA/vms/default/$VM" ] && echo present || echo absent)"
fact after_cgroup "$([ -e "/sys/fs/cgroup/ironvisor/default_$VM" ] && echo present || echo absent)"
$IP -br link
ls -la "$DATA/net" "$DATA/net/ipam/ironvisor" "$RUN" "$RUN/vmi" 2>&1

kill -TERM "$HPID"
wait "$HPID"
fact handler_final_rc $?
echo "L1: ----- handler log"
sed "s/$ESC\[[0-9;]*m//g; s/^/handler| /" /tmp/handler.log | tail -n 200
echo "L1: ----- seccomp audit lines"
dmesg | grep -i 'type=1326\|seccomp' | tail -n 50
fact seccomp_audit_lines "$(dmesg | grep -c 'type=1326')"
fact scenario_done yes
exit 0
