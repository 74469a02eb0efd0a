#!/usr/bin/env bash
# Build the test image local/sshd:openssh10: Debian bookworm (minbase) with OpenSSH 10 from
# bookworm-backports. No registry is needed: the root filesystem comes from debootstrap and
# becomes an image through `docker import`. Needs root (debootstrap, chroot), docker, debootstrap.
#
# By hand, the same server:
#   bash dev/sshd-image/build.sh
#   docker run --rm --network host -v "$D:$D" local/sshd:openssh10 \
#     sh -c "mkdir -p /run/sshd && exec /usr/sbin/sshd -D -f $D/sshd_config -E $D/sshd.log"
#
# Cached: the image carries a label with the hash of this recipe and is rebuilt only when the
# recipe changes; the debootstrap result is kept as a tarball in $SSH_JOBS_TEST_CACHE
# (default /var/cache/ssh-jobs-test), so a rebuild skips the ~45 s bootstrap.
set -euo pipefail

IMAGE="${SSH_JOBS_TEST_IMAGE:-local/sshd:openssh10}"
CACHE="${SSH_JOBS_TEST_CACHE:-/var/cache/ssh-jobs-test}"
SUITE=bookworm
LABEL=org.ssh-jobs.recipe-sha256

# The machine's Debian mirror and keyring (deb822 file), so the image uses what apt here uses.
HOST_SOURCES=/etc/apt/sources.list.d/debian.sources
MIRROR=http://deb.debian.org/debian
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
if [ -r "$HOST_SOURCES" ]; then
  MIRROR=$(awk '/^URIs:/ {print $2; exit}' "$HOST_SOURCES")
  KEYRING=$(awk '/^Signed-By:/ {print $2; exit}' "$HOST_SOURCES")
fi

recipe_hash=$( { cat "$0"; echo "$IMAGE $MIRROR"; } | sha256sum | cut -c1-16)
current=$(docker image inspect -f "{{ index .Config.Labels \"$LABEL\" }}" "$IMAGE" 2>/dev/null || true)
if [ "$current" = "$recipe_hash" ]; then
  echo "sshd image: $IMAGE is up to date (recipe $recipe_hash)"
  exit 0
fi
echo "sshd image: building $IMAGE (recipe $recipe_hash)"
started=$(date +%s)

mkdir -p "$CACHE"
work=$(mktemp -d "$CACHE/build.XXXXXX")
cleanup() {
  # Never leave the chroot's /proc mounted; then remove the scratch root filesystem.
  if mountpoint -q "$work/rootfs/proc"; then umount "$work/rootfs/proc"; fi
  rm -rf "$work"
}
trap cleanup EXIT
rootfs="$work/rootfs"

# 1. The base system, bootstrapped once per suite and mirror.
base="$CACHE/$SUITE-minbase-$(echo "$MIRROR" | sha256sum | cut -c1-8).tar"
if [ ! -f "$base" ]; then
  debootstrap --variant=minbase --keyring="$KEYRING" "$SUITE" "$rootfs" "$MIRROR" >"$work/debootstrap.log" 2>&1 \
    || { tail -n 20 "$work/debootstrap.log" >&2; exit 1; }
  tar -C "$rootfs" -cf "$base.partial" . && mv "$base.partial" "$base"
else
  mkdir -p "$rootfs" && tar -C "$rootfs" -xf "$base"
fi

# 2. OpenSSH 10 from bookworm-backports, installed by the image's own apt.
cat >"$rootfs/etc/apt/sources.list.d/backports.sources" <<SOURCES
Types: deb
URIs: $MIRROR
Suites: $SUITE-backports
Components: main
Signed-By: $KEYRING
SOURCES
cp /etc/resolv.conf "$rootfs/etc/resolv.conf"
# Packages must not try to start services inside the chroot.
printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d" && chmod +x "$rootfs/usr/sbin/policy-rc.d"
mount -t proc proc "$rootfs/proc"
chroot "$rootfs" /bin/sh -ec "
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends -t $SUITE-backports openssh-server
  apt-get clean
" >"$work/apt.log" 2>&1 || { tail -n 20 "$work/apt.log" >&2; exit 1; }
umount "$rootfs/proc"
# The tests bring their own host keys and config; the image's generated keys are not needed.
rm -rf "$rootfs"/etc/ssh/ssh_host_* "$rootfs"/var/lib/apt/lists/* "$rootfs/usr/sbin/policy-rc.d"
version=$(chroot "$rootfs" /usr/sbin/sshd -V 2>&1 | head -n 1)
case "$version" in
  OpenSSH_10.*) ;;
  *) echo "sshd image: expected OpenSSH 10, got: $version" >&2; exit 1 ;;
esac

# 3. The image: the root filesystem, labelled with the recipe's hash.
tar -C "$rootfs" -c . | docker import --change "LABEL $LABEL=$recipe_hash" - "$IMAGE" >/dev/null
echo "sshd image: $IMAGE built with $version in $(( $(date +%s) - started ))s"
