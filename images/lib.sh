# Shell helpers shared by images/build-guest.sh and tests/rig/build-rig.sh (sourced).

# copy_modules MODROOT KVER DESTROOT MODULE...: copies the named kernel modules and everything
# they depend on from MODROOT/lib/modules/KVER into DESTROOT/lib/modules/KVER, with the
# indexes busybox modprobe needs.
copy_modules() {
    local modroot=$1 kver=$2 dest=$3
    shift 3
    local src=$modroot/lib/modules/$kver dst=$dest/lib/modules/$kver
    mkdir -p "$dst"
    cp "$src"/modules.order "$src"/modules.builtin "$src"/modules.builtin.modinfo "$dst/"
    local m deps ko rel
    for m in "$@"; do
        # `|| return` works here: callers run this as `copy_modules ... || die`, where
        # errexit is off.
        deps=$(modprobe -d "$modroot" -S "$kver" --show-depends "$m") \
            || { echo "module $m not found for $kver" >&2; return 1; }
        for ko in $(printf '%s\n' "$deps" | sed -n 's/^insmod \([^ ]*\).*/\1/p'); do
            rel=${ko#"$src"/}
            mkdir -p "$dst/$(dirname "$rel")"
            cp "$ko" "$dst/$rel" || return 1
        done
    done
    depmod -b "$dest" "$kver"
}

# pack_cpio ROOT OUT: packs ROOT as a reproducible uncompressed newc archive at OUT.
pack_cpio() {
    (cd "$1" && find . -mindepth 1 | LC_ALL=C sort \
        | cpio -o -H newc -R 0:0 --reproducible --quiet) > "$2.tmp"
    mv "$2.tmp" "$2"
}
