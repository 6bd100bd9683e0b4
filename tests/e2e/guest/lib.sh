# Helpers sourced by the guest scenarios (/scenarios/lib.sh); not a scenario itself.

# Value of "NAME=value" on the kernel command line (empty when absent).
iv_param() {
	# shellcheck disable=SC2013 # the command line is one line of words
	for word in $(cat /proc/cmdline); do
		case "$word" in
		"$1="*) echo "${word#*=}" ;;
		esac
	done
}

# One fact for the test to assert on: GUEST-FACT key=value
fact() {
	echo "GUEST-FACT $1=$2"
}

# ping_l1: gives eth0 172.30.0.2/24 and pings L1 at 172.30.0.1 (up to 5 tries); prints
# yes or no.
ping_l1() {
	ip addr add 172.30.0.2/24 dev eth0
	ip link set eth0 up
	for _ in 1 2 3 4 5; do
		if ping -c 1 -W 2 172.30.0.1 >/dev/null 2>&1; then
			echo yes
			return
		fi
	done
	echo no
}
