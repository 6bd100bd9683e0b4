# Lifecycle: announce readiness and idle until stopped from outside.
echo GUEST-IDLE-READY
while :; do
	sleep 1
done
