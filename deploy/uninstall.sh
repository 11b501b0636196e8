#!/bin/sh
# Uninstalls the ami-gateway appliance installed as README.md's "Installing on
# an ARM box" describes. Run as root:
#
#   /opt/ami-gateway/deploy/uninstall.sh [--purge]
#
# 1. stops and disables the service (so its drift check cannot put the
#    firewall table back),
# 2. removes the gateway's nftables table inet ami_gateway, and only that one
#    (`ami-gateway firewall remove`),
# 3. removes the systemd unit and the installed tree,
# 4. with --purge, also the data (/var/lib/ami-gateway: outbox, journals,
#    keys), the configuration (/etc/ami-gateway) and the service user.
#
# npm runs no uninstall scripts (since npm 7), so this is the uninstall hook.
# AMI_INSTALL_DIR, AMI_SYSTEMD_DIR, AMI_DATA_DIR and AMI_CONFIG_DIR override
# the paths (the tests use them); they must be absolute, and the install
# directory must hold ami-gateway's package.json, or nothing is removed.
set -eu

purge=no
for arg in "$@"; do
  case "$arg" in
    --purge) purge=yes ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "uninstall.sh: unknown option $arg (expected --purge)" >&2; exit 2 ;;
  esac
done

install_dir=${AMI_INSTALL_DIR:-/opt/ami-gateway}
unit_dir=${AMI_SYSTEMD_DIR:-/etc/systemd/system}
data_dir=${AMI_DATA_DIR:-/var/lib/ami-gateway}
config_dir=${AMI_CONFIG_DIR:-/etc/ami-gateway}
unit="$unit_dir/ami-gateway.service"

# Everything below removes trees: only absolute paths other than /, and only an installed ami-gateway.
for dir in "$install_dir" "$unit_dir" "$data_dir" "$config_dir"; do
  case "$dir" in
    /|/.|//*) echo "uninstall.sh: refusing to work on \"$dir\"" >&2; exit 2 ;;
    /*) ;;
    *) echo "uninstall.sh: \"$dir\" is not an absolute path" >&2; exit 2 ;;
  esac
done
if ! grep -q '"name": "node-red-contrib-ami-gateway"' "$install_dir/package.json" 2>/dev/null; then
  echo "uninstall.sh: $install_dir/package.json is not ami-gateway's; nothing was removed" >&2
  exit 2
fi

if [ -f "$unit" ] && command -v systemctl >/dev/null 2>&1; then
  echo "stopping and disabling ami-gateway.service"
  systemctl disable --now ami-gateway.service
fi

if [ -f "$install_dir/bin/ami-gateway.js" ]; then
  # Exit 3: no nft or no CAP_NET_ADMIN, so there is no table of ours to remove either way.
  status=0
  node "$install_dir/bin/ami-gateway.js" firewall remove || status=$?
  if [ "$status" -ne 0 ] && [ "$status" -ne 3 ]; then
    echo "uninstall.sh: removing the firewall table failed (exit $status); nothing else was removed" >&2
    exit 1
  fi
else
  echo "uninstall.sh: $install_dir/bin/ami-gateway.js not found; the firewall table (if any) stays: nft delete table inet ami_gateway" >&2
fi

if [ -f "$unit" ]; then
  rm -f "$unit"
  if command -v systemctl >/dev/null 2>&1; then systemctl daemon-reload; fi
  echo "removed $unit"
fi

if [ "$purge" = yes ]; then
  rm -rf "$data_dir" "$config_dir"
  echo "removed $data_dir and $config_dir"
  if id ami-gateway >/dev/null 2>&1 && command -v userdel >/dev/null 2>&1; then
    userdel ami-gateway
    echo "removed the user ami-gateway"
  fi
fi

echo "removed $install_dir"
# Last, and through exec: this script lives in the tree it removes.
exec rm -rf "$install_dir"
