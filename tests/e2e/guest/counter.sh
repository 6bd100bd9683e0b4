# API: print a counter every 0.2 s so that a paused VM is visibly silent.
i=0
while :; do
	i=$((i + 1))
	echo "GUEST-COUNTER $i"
	sleep 0.2
done
