#!/bin/bash
# dracut module for rpmimg deployments (see README, "Booting").
#
# A deployment boots with root= (its writable root subvolume) and mount.usr= /
# mount.usrflags= (its read-only /usr subvolume); systemd's fstab generator in the
# initrd mounts both at /sysroot and /sysroot/usr. This module adds what happens
# between that and switch-root: the first-boot /etc sync (rpmimg-etc-sync.sh, POSIX
# sh and GNU coreutils) with what it runs, and a kernel command line default that
# turns an initrd failure into a reboot, so that boot counting can fall back to an
# older entry.

check() {
    require_binaries sh || return 1
    return 255  # only when asked for (compose asks)
}

depends() {
    echo systemd systemd-initrd usrmount
    return 0
}

install() {
    inst_multiple sh cat chmod chown comm cp cut mkdir mktemp mount mv readlink rm sha256sum \
        sort stat sync umount
    inst_simple "$moddir/rpmimg-etc-sync.sh" /usr/lib/rpmimg/rpmimg-etc-sync.sh
    chmod 0755 "$initdir/usr/lib/rpmimg/rpmimg-etc-sync.sh"
    inst_simple "$moddir/rpmimg-etc-sync.service" "$systemdsystemunitdir/rpmimg-etc-sync.service"
    $SYSTEMCTL -q --root "$initdir" add-wants initrd.target rpmimg-etc-sync.service
    mkdir -p "$initdir/etc/cmdline.d"
    echo "rd.shell=0 rd.emergency=reboot" > "$initdir/etc/cmdline.d/50-rpmimg.conf"
    # rd.emergency=reboot has dracut-emergency run `reboot`, which dracut's systemd module
    # copies only where the image has it (e.g. Debian's systemd-sysv links); without it the
    # failed boot stays in emergency and boot counting never falls back. systemctl called
    # as `reboot` reboots.
    inst_multiple -o reboot
    local _d
    for _d in usr/sbin usr/bin sbin bin; do
        [ -e "$initdir/$_d/reboot" ] && return 0
    done
    for _d in usr/bin bin usr/sbin sbin; do
        if [ -x "$initdir/$_d/systemctl" ]; then
            mkdir -p "$initdir/usr/sbin"
            ln -sfn "/$_d/systemctl" "$initdir/usr/sbin/reboot"
            return 0
        fi
    done
    derror "rpmimg: neither reboot nor systemctl in the initrd: rd.emergency=reboot cannot work"
    return 1
}
