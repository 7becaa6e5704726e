#!/bin/sh
# /init of the vhostfs test guest (PID 1, busybox ash).
#
# Contract with tests/support/vm.py:
#   * /vhostfs/params (per-boot cpio) sets NONCE and BOOTS; /vhostfs/script is the test script.
#   * The script runs as `sh -e /vhostfs/script` with cwd /, stdin /dev/null, and the env
#     BOOT (1-based boot number), BOOTS, SCRATCH (scratch block device or empty).
#   * Its stdout is kept in tmpfs; its stderr is kept and also streamed to the console so a
#     hung script still leaves a trace.  When it exits, one framed record goes to the result
#     port (/dev/ttyS1): a header line with the lengths, the stdout bytes, the stderr bytes,
#     an END line.  A marker line also goes to the console.
#   * Then: poweroff -f, or reboot -f if the script succeeded and BOOT < BOOTS.
# Every failure of /init itself is reported as status 200+ so it cannot pass for a test result.

PATH=/bin
export PATH

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp

. /vhostfs/params

finish() {
	# $1 = status. Frames the record, then powers off or reboots.
	rc=$1
	out_len=$(wc -c < /run/stdout)
	err_len=$(wc -c < /run/stderr)
	{
		printf '\n@@VHOSTFS-RESULT %s %s %s %s %s@@\n' "$NONCE" "$BOOT" "$rc" "$out_len" "$err_len"
		cat /run/stdout /run/stderr
		printf '@@VHOSTFS-END %s %s@@\n' "$NONCE" "$BOOT"
	} > /dev/ttyS1
	# closing a serial port waits for its transmit buffer to drain, but be explicit
	vmtool drain /dev/ttyS1
	echo "@@VHOSTFS-EXIT $NONCE $BOOT $rc@@" > /dev/console
	sync
	if [ "$rc" = 0 ] && [ "$BOOT" -lt "$BOOTS" ]; then
		reboot -f
	fi
	poweroff -f
}

BOOT=1
SCRATCH=
: > /run/stdout
: > /run/stderr

# raw: the result port must pass bytes through unchanged (no \n -> \r\n, no echo)
stty -F /dev/ttyS1 raw -echo 2> /run/stderr || finish 201

while read -r mod; do
	insmod "/lib/modules/$mod.ko" 2>> /run/stderr || finish 202
done < /lib/modules/load-order

# virtio-blk disks are found by serial, not by probe order
for dev in /sys/block/vd*; do
	[ -e "$dev/serial" ] || continue
	case "$(cat "$dev/serial")" in
	vhostfs-state) STATE=/dev/${dev##*/} ;;
	vhostfs-scratch) SCRATCH=/dev/${dev##*/} ;;
	esac
done

if [ "$BOOTS" -gt 1 ]; then
	[ -n "$STATE" ] || { echo "no state disk" >> /run/stderr; finish 203; }
	prev=$(dd if="$STATE" bs=16 count=1 2> /dev/null | tr -dc 0-9)
	BOOT=$((${prev:-0} + 1))
	printf '%-15s\n' "$BOOT" | dd of="$STATE" bs=16 count=1 conv=notrunc 2> /dev/null
	sync
	# a crashed boot loop must end, not spin until the harness timeout
	[ "$BOOT" -le "$BOOTS" ] || { echo "boot $BOOT > $BOOTS" >> /run/stderr; finish 204; }
fi
export BOOT BOOTS SCRATCH

mkfifo /run/stderr.pipe
tee /run/stderr < /run/stderr.pipe > /dev/console &
tee_pid=$!
cd /
# own session, so jobs the script leaves behind can be killed: they would hold the stderr
# pipe open (tee never ends) and could still write after the record is framed
setsid sh -e /vhostfs/script < /dev/null > /run/stdout 2> /run/stderr.pipe &
script_pid=$!
wait "$script_pid"
rc=$?
kill -KILL -- "-$script_pid" 2> /dev/null
wait "$tee_pid"
finish "$rc"
