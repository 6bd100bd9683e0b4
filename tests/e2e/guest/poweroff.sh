# Lifecycle: the guest powers itself off (the launcher should exit 0).
. /scenarios/lib.sh
fact powering_off yes
sync
poweroff -f
