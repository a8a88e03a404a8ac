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
}
