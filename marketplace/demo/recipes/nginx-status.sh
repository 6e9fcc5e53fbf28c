#!/usr/bin/env bash
#
# nginx-status.sh: serve a small status page (hostname, uptime, load average) with nginx.
#
# What it does:
#   - installs nginx from the Ubuntu archive;
#   - installs /usr/local/bin/nginx-status-page, which writes /var/www/status/index.html;
#   - runs that generator every minute from a systemd timer (nginx-status-page.timer);
#   - replaces the default nginx site with one that serves /var/www/status;
#   - enables nginx and the timer so both start again after a reboot.
#
# Ports: 80/tcp (HTTP). If ufw is active, the script allows 80/tcp and nothing else.
# Credentials: none; the page is public and read-only.
#
# Runs as root on a fresh Ubuntu 24.04 server. Running it again rewrites the same files and
# restarts nothing that is already in the wanted state.
#
# Tested on: written for Ubuntu 24.04; not executed on a real VM in this repository's CI.
# CI checks it with shellcheck and bash -n only.

set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

readonly STATUS_ROOT="/var/www/status"
readonly GENERATOR="/usr/local/bin/nginx-status-page"
readonly SITE_NAME="status-page"
readonly HTTP_PORT=80

log() {
    printf '[nginx-status] %s\n' "$*" >&2
}

require_root() {
    if ((EUID != 0)); then
        log "This recipe must run as root (it installs packages and writes to /etc)."
        exit 1
    fi
}

install_packages() {
    log "Installing nginx"
    apt-get update -q
    apt-get install -y -q nginx
}

install_generator() {
    log "Writing ${GENERATOR}"
    install -d -m 0755 "${STATUS_ROOT}"
    # The generator writes a temporary file and renames it into place, so nginx never serves
    # a half-written page.
    cat >"${GENERATOR}" <<'GENERATOR_SCRIPT'
#!/usr/bin/env bash
# Write the nginx status page. The nginx-status recipe installs this script, and
# nginx-status-page.timer runs it every minute.
set -euo pipefail

status_root="${STATUS_ROOT:-/var/www/status}"

html_escape() {
    local text="$1"
    text="${text//&/&amp;}"
    text="${text//</&lt;}"
    text="${text//>/&gt;}"
    printf '%s' "${text}"
}

# Each command runs in its own assignment so that set -e stops on its failure.
host_name="$(hostname)"
host_name="$(html_escape "${host_name}")"
up_since="$(uptime --since)"
up_for="$(uptime --pretty)"
up_for="$(html_escape "${up_for}")"
read -r load1 load5 load15 _ </proc/loadavg
cpu_count="$(nproc)"
kernel="$(uname -r)"
kernel="$(html_escape "${kernel}")"
generated_at="$(date --utc '+%Y-%m-%d %H:%M:%S UTC')"

page="$(mktemp "${status_root}/.index.html.XXXXXX")"
trap 'rm -f "${page}"' EXIT

cat >"${page}" <<HTML
<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="refresh" content="60">
<title>Status of ${host_name}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; }
table { border-collapse: collapse; }
th, td { text-align: left; padding: 0.3rem 1rem 0.3rem 0; }
th { color: #555; font-weight: normal; }
</style>
</head>
<body>
<h1>${host_name}</h1>
<table>
<tr><th>Up since</th><td>${up_since} (${up_for})</td></tr>
<tr><th>Load average (1, 5, 15 min)</th><td>${load1} ${load5} ${load15} on ${cpu_count} CPUs</td></tr>
<tr><th>Kernel</th><td>${kernel}</td></tr>
<tr><th>Page generated</th><td>${generated_at}</td></tr>
</table>
</body>
</html>
HTML

chmod 0644 "${page}"
mv -f "${page}" "${status_root}/index.html"
trap - EXIT
GENERATOR_SCRIPT
    chmod 0755 "${GENERATOR}"
}

install_timer() {
    log "Installing the systemd timer that refreshes the page every minute"
    cat >/etc/systemd/system/nginx-status-page.service <<UNIT
[Unit]
Description=Write the nginx status page to ${STATUS_ROOT}/index.html

[Service]
Type=oneshot
Environment=STATUS_ROOT=${STATUS_ROOT}
ExecStart=${GENERATOR}
UNIT

    cat >/etc/systemd/system/nginx-status-page.timer <<'UNIT'
[Unit]
Description=Refresh the nginx status page every minute

[Timer]
OnBootSec=15s
OnCalendar=minutely
AccuracySec=5s

[Install]
WantedBy=timers.target
UNIT

    systemctl daemon-reload
    systemctl enable --now nginx-status-page.timer
    # Write the page once now so the first request does not get a 404.
    systemctl start nginx-status-page.service
}

configure_nginx() {
    log "Configuring the nginx site ${SITE_NAME}"
    cat >"/etc/nginx/sites-available/${SITE_NAME}" <<NGINX
# Managed by the nginx-status recipe. Rerunning the recipe overwrites this file.
server {
    listen ${HTTP_PORT} default_server;
    listen [::]:${HTTP_PORT} default_server;
    server_name _;

    root ${STATUS_ROOT};
    index index.html;

    location / {
        add_header Cache-Control "no-store";
        try_files \$uri \$uri/ =404;
    }
}
NGINX

    ln -sfn "/etc/nginx/sites-available/${SITE_NAME}" "/etc/nginx/sites-enabled/${SITE_NAME}"
    # The packaged default site also claims default_server on port 80, and nginx -t rejects
    # two default servers on one port.
    rm -f /etc/nginx/sites-enabled/default

    nginx -t
    systemctl enable nginx
    if systemctl is-active --quiet nginx; then
        systemctl reload nginx
    else
        systemctl start nginx
    fi
}

open_firewall() {
    # Ubuntu cloud images ship ufw inactive, so add a rule only when an administrator enabled it.
    if command -v ufw >/dev/null 2>&1 && ufw status | grep -q '^Status: active'; then
        log "ufw is active: allowing ${HTTP_PORT}/tcp"
        ufw allow "${HTTP_PORT}/tcp"
    fi
}

print_summary() {
    local address
    address="$(hostname -I | awk '{print $1}')"
    cat <<SUMMARY

==================== nginx status page is ready ====================
  URL:          http://${address:-<server-ip>}:${HTTP_PORT}/
  Port:         ${HTTP_PORT}/tcp (HTTP, no TLS)
  Page file:    ${STATUS_ROOT}/index.html (rewritten every minute)
  Generator:    ${GENERATOR}
  Timer:        systemctl list-timers nginx-status-page.timer
  Credentials:  none; the page is public and read-only
=====================================================================
SUMMARY
}

main() {
    require_root
    install_packages
    install_generator
    configure_nginx
    install_timer
    open_firewall
    print_summary
}

main "$@"
