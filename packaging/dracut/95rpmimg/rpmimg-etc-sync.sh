#!/bin/sh
# rpmimg first-boot /etc sync: carry edits made in the old root after a deploy into the
# new deployment's root, before anything reads /etc (run in the initrd, before switch-root).
#
#   rpmimg-etc-sync.sh NEW_ROOT
#
# NEW_ROOT is the new deployment's root with its /usr mounted (/sysroot in the initrd).
# The deploy recorded, in NEW_ROOT/usr/lib/sysimage/rpmimg/etc-base/ (see deploy/etcbase.py):
#   old-deployment  the id of the deployment whose root the new root was made from
#   entries         "TYPE MODE UID GID SHA256 PATH" of every entry of that root's /etc then
#   stamps          "TYPE MODE UID GID INODE CTIME PATH" of the same entries
# (A first deployment writes entries and stamps of its own /etc, and no old-deployment.)
#   merged          every path (relative to /etc) the /etc merge wrote or removed in the new root
# The old root is RPMIMG_OLD_ROOT if set, else TOP/@rpmimg/roots/<old-deployment>, TOP being
# the top level (subvolid=5) of NEW_ROOT's btrfs, mounted read-only for the run.
#
# Every path whose entry in the old root now differs from the record (content, type, mode,
# owner, or presence; only entries whose stamp moved are hashed) is carried into the new
# root, unless the merge wrote the same path: then the administrator's later version is kept beside it as PATH.rpmimg-edit (or, deleted,
# is reported) and nothing is dropped silently. What was done is in
# NEW_ROOT/etc/rpmimg/etc-sync.log, whose presence also marks the sync as done. Nothing is
# followed through a symlink: a path whose parent is not a plain directory, in either root,
# is reported and left alone. Uses POSIX sh and GNU coreutils (stat %.9Z) only.

set -eu
LC_ALL=C
export LC_ALL
umask 077

die() { echo "rpmimg-etc-sync: $*" >&2; exit 1; }

[ $# -eq 1 ] || die "usage: rpmimg-etc-sync.sh NEW_ROOT"
NEW=${1%/}
BASE=$NEW/usr/lib/sysimage/rpmimg/etc-base
LOG=$NEW/etc/rpmimg/etc-sync.log
nl='
'

[ -d "$NEW/etc" ] && [ ! -L "$NEW/etc" ] || die "$NEW/etc: not a directory"
[ -e "$LOG" ] || [ -L "$LOG" ] && exit 0          # already done
if [ -L "$NEW/etc/rpmimg" ] || { [ -e "$NEW/etc/rpmimg" ] && [ ! -d "$NEW/etc/rpmimg" ]; }; then
    die "$NEW/etc/rpmimg: not a directory"      # checked first: nothing done, then refused
fi
[ -f "$BASE/old-deployment" ] || exit 0           # a first deployment: nothing to carry
read -r OLD_ID < "$BASE/old-deployment" || die "$BASE/old-deployment: unreadable"
case $OLD_ID in ''|*/*|.|..) die "$BASE/old-deployment: bad id '$OLD_ID'" ;; esac

T=$(mktemp -d "${TMPDIR:-/tmp}/rpmimg-etc-sync.XXXXXX")
TOP=
cleanup() {
    [ -z "$TOP" ] || umount "$TOP" 2>/dev/null || :
    rm -rf "$T"
}
trap cleanup EXIT
trap 'exit 1' HUP INT TERM

old_root() {
    if [ -n "${RPMIMG_OLD_ROOT:-}" ]; then
        OLD=${RPMIMG_OLD_ROOT%/}
        return
    fi
    src=
    while read -r _id _parent _mm _root mp rest; do
        [ "$mp" = "$NEW" ] || continue
        x=${rest#* - }; x=${x#* }; src=${x%% *}
    done < /proc/self/mountinfo
    [ -n "$src" ] || die "$NEW: not a mount point; cannot find the old root"
    mkdir "$T/top"
    mount -t btrfs -o ro,subvolid=5 "$src" "$T/top" || die "$src: cannot mount the top level"
    TOP=$T/top
    OLD=$TOP/@rpmimg/roots/$OLD_ID
}
old_root
log() { printf '%s\n' "$*" >> "$T/log"; }
printf '# rpmimg etc-sync into this root from deployment %s\n' "$OLD_ID" > "$T/log"
if [ ! -d "$OLD/etc" ] || [ -L "$OLD/etc" ]; then
    log "nothing: $OLD/etc is gone"
    OLD=
fi

# The type letter of stat's raw hex mode (%f): f, d, l or o.
type_of() {
    case $1 in 8???) echo f ;; 4???) echo d ;; a???) echo l ;; *) echo o ;; esac
}

# One stamp line per entry below the plain directory $1: one stat call per directory.
# Names holding a newline are left out. Each line's fields are split off one at a time, so
# a name keeps its spaces.
stamps() {
    set -- "$1"
    for st_e in "$1"/* "$1"/.[!.]* "$1"/..?*; do
        [ -e "$st_e" ] || [ -L "$st_e" ] || continue
        case $st_e in *"$nl"*) continue ;; esac
        set -- "$@" "$st_e"
    done
    shift
    [ $# -gt 0 ] || return 0
    stat -c '%f %a %u %g %i %.9Z %n' -- "$@" | while IFS= read -r st_line; do
        case $st_line in 8???\ *) st_t=f ;; 4???\ *) st_t=d ;; a???\ *) st_t=l ;; *) st_t=o ;; esac
        st_rest=${st_line#* }
        st_name=$st_rest  # drop mode uid gid ino ctime: the name is the rest
        i=0
        while [ $i -lt 5 ]; do st_name=${st_name#* }; i=$((i + 1)); done
        st_meta=${st_rest%"$st_name"}
        printf '%s %s%s\n' "$st_t" "$st_meta" "${st_name#"$OLD/etc/"}"
        if [ "$st_t" = d ]; then stamps "$st_name"; fi
    done
}

# The record's identity line (TYPE MODE UID GID SHA256 PATH) of old root's etc-relative $1.
identity() {
    id_p=$OLD/etc/$1
    id_raw=$(stat -c '%f %a %u %g' -- "$id_p")
    id_t=$(type_of "${id_raw%% *}")
    id_d=-
    if [ "$id_t" = l ]; then
        id_d=$(printf '%s' "$(readlink -- "$id_p")" | sha256sum); id_d=${id_d%% *}
    elif [ "$id_t" = f ]; then
        id_d=$(sha256sum < "$id_p"); id_d=${id_d%% *}
    fi
    printf '%s %s %s %s\n' "$id_t" "${id_raw#* }" "$id_d" "$1"
}

# Whether line $1 is one of the record's entries.
recorded() {
    while IFS= read -r rec_line; do
        [ "$rec_line" = "$1" ] && return 0
    done < "$BASE/entries"
    return 1
}

# Whether every parent of etc-relative path $2 below root $1 is a plain directory.
# (POSIX sh has no local variables: each function's names start with its own prefix.)
plain_parents() {
    pp_dir=$1/etc
    pp_rest=$2
    while :; do
        case $pp_rest in */*) ;; *) return 0 ;; esac
        pp_dir=$pp_dir/${pp_rest%%/*}; pp_rest=${pp_rest#*/}
        [ -d "$pp_dir" ] && [ ! -L "$pp_dir" ] || return 1
    done
}

present() { [ -e "$1" ] || [ -L "$1" ]; }

# Copy old root's entry $1 (etc-relative) to new root's path $2 (etc-relative), replacing.
put() {
    put_src=$OLD/etc/$1; put_dst=$NEW/etc/$2
    if [ -d "$put_src" ] && [ ! -L "$put_src" ]; then
        if present "$put_dst" && { [ -L "$put_dst" ] || [ ! -d "$put_dst" ]; }; then
            rm -f -- "$put_dst"
        fi
        [ -d "$put_dst" ] || mkdir -- "$put_dst"
        chown --reference="$put_src" -- "$put_dst"
        chmod --reference="$put_src" -- "$put_dst"
        return
    fi
    put_tmp=${put_dst%/*}/.rpmimg-etc-sync.tmp
    rm -rf -- "$put_tmp"
    cp -a -- "$put_src" "$put_tmp"
    if [ -d "$put_dst" ] && [ ! -L "$put_dst" ]; then rm -rf -- "$put_dst"; fi
    mv -fT -- "$put_tmp" "$put_dst"
}

if [ -n "$OLD" ]; then
    sort -- "$BASE/stamps" > "$T/base"
    [ -f "$BASE/merged" ] && sort -u -- "$BASE/merged" > "$T/merged" || : > "$T/merged"
    stamps "$OLD/etc" "" | sort > "$T/now"
    # Entries whose inode, ctime, type, mode or owner differ, or that came or went; of those
    # still there, the ones whose content is what the record says are only touched: dropped.
    { comm -23 "$T/base" "$T/now"; comm -13 "$T/base" "$T/now"; } | cut -d' ' -f7- | sort -u > "$T/stamped"
    : > "$T/changed"
    while IFS= read -r p; do
        if plain_parents "$OLD" "$p" && present "$OLD/etc/$p" && recorded "$(identity "$p")"; then
            continue
        fi
        printf '%s\n' "$p" >> "$T/changed"
    done < "$T/stamped"
    comm -12 "$T/changed" "$T/merged" > "$T/conflicts"
    comm -23 "$T/changed" "$T/merged" > "$T/carry"

    # Deletions first, deepest first, so a directory is empty by the time it goes.
    sort -r "$T/carry" > "$T/carry-r"
    while IFS= read -r p; do
        if plain_parents "$OLD" "$p" && present "$OLD/etc/$p"; then continue; fi
        if ! plain_parents "$NEW" "$p"; then log "conflict $p: deleted, but a parent is not a directory here"; continue; fi
        present "$NEW/etc/$p" || continue
        rm -rf -- "${NEW:?}/etc/$p"
        log "removed $p"
    done < "$T/carry-r"

    while IFS= read -r p; do
        plain_parents "$OLD" "$p" && present "$OLD/etc/$p" || continue
        if ! plain_parents "$NEW" "$p"; then
            log "conflict $p: not carried, a parent is not a directory here (still in the old root)"
            continue
        fi
        put "$p" "$p"
        log "carried $p"
    done < "$T/carry"

    while IFS= read -r p; do
        if ! plain_parents "$OLD" "$p" || ! present "$OLD/etc/$p"; then
            log "conflict $p: deleted after the deploy, but the update changed it; the update's version stays"
        elif [ -d "$OLD/etc/$p" ] && [ ! -L "$OLD/etc/$p" ]; then
            log "conflict $p: directory changed after the deploy and by the update; the update's stays"
        elif plain_parents "$NEW" "$p.rpmimg-edit"; then
            put "$p" "$p.rpmimg-edit"
            log "conflict $p: changed after the deploy and by the update; the later edit is $p.rpmimg-edit"
        else
            log "conflict $p: changed after the deploy and by the update; not carried (still in the old root)"
        fi
    done < "$T/conflicts"
fi

# The log, last: its presence means done.
[ -d "$NEW/etc/rpmimg" ] || mkdir -m 0755 -- "$NEW/etc/rpmimg"
chmod 0644 "$T/log"
cp -- "$T/log" "$NEW/etc/rpmimg/.etc-sync.log.tmp"
mv -fT -- "$NEW/etc/rpmimg/.etc-sync.log.tmp" "$LOG"
sync -f -- "$LOG"  # the filesystem of the new root, not every one
cat "$T/log"
