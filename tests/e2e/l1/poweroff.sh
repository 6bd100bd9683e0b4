# Lifecycle: a guest that powers itself off ends the VMM with exit code 0.
. /e2e/common.sh
. /e2e/params
vm_start off /tmp/off "iv.run=poweroff" --vcpus 1 --memory-mib 256
vm_wait 240
show /tmp/off
fact vm_rc "$VM_RC"
fact procs_after "$(procs_of off | wc -l)"
