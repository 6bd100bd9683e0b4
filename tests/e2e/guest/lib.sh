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
