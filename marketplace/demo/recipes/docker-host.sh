#!/usr/bin/env bash
#
# docker-host.sh: install Docker Engine from Docker's official apt repository.
#
# What it does:
#   - removes Ubuntu's own container packages that conflict with Docker's (docker.io,
#     podman-docker, containerd, runc, ...), but only those that are installed;
#   - stores Docker's repository signing key in /etc/apt/keyrings/docker.asc and adds
#     https://download.docker.com/linux/ubuntu with signed-by pointing at that key;
#   - installs docker-ce, docker-ce-cli, containerd.io and the buildx and compose plugins;
#   - enables docker and containerd so they start after a reboot;
#   - runs `docker run --rm hello-world` to check that images can be pulled and run.
#
# Ports: none. The Docker daemon listens only on /var/run/docker.sock, and this script does
# not change any firewall rule. Containers that publish ports (docker run -p) open them.
# Credentials: none. Root can use docker directly; add other users to the docker group
# (usermod -aG docker NAME), which gives them root-equivalent access to this server.
#
# Rerunning the script rewrites the key and the repository file, lets apt-get keep the
# packages that are already installed, and runs hello-world again.
#
# Tested on: written for Ubuntu 24.04; not executed on a real VM in this repository's CI.
# CI checks it with shellcheck and bash -n only.

set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

readonly KEYRING="/etc/apt/keyrings/docker.asc"
readonly SOURCES_FILE="/etc/apt/sources.list.d/docker.list"
readonly DOCKER_APT_URL="https://download.docker.com/linux/ubuntu"

log() {
    printf '[docker-host] %s\n' "$*" >&2
}

require_root() {
    if ((EUID != 0)); then
        log "This recipe must run as root (it installs packages and writes to /etc)."
        exit 1
    fi
}

remove_conflicting_packages() {
    # These Ubuntu packages ship their own docker, containerd or runc and conflict with Docker's.
    local package
    local installed=()
    for package in docker.io docker-doc docker-compose docker-compose-v2 podman-docker containerd runc; do
        if dpkg-query --show --showformat='${Status}' "${package}" 2>/dev/null | grep -q 'install ok installed'; then
            installed+=("${package}")
        fi
    done
    if ((${#installed[@]} > 0)); then
        log "Removing conflicting packages: ${installed[*]}"
        apt-get remove -y -q "${installed[@]}"
    fi
}

add_docker_repository() {
    log "Adding Docker's apt repository"
    apt-get update -q
    apt-get install -y -q ca-certificates curl

    install -d -m 0755 /etc/apt/keyrings
    curl --fail --silent --show-error --location "${DOCKER_APT_URL}/gpg" --output "${KEYRING}.tmp"
    chmod 0644 "${KEYRING}.tmp"
    mv -f "${KEYRING}.tmp" "${KEYRING}"

    local architecture codename
    architecture="$(dpkg --print-architecture)"
    # shellcheck source=/dev/null
    codename="$(. /etc/os-release && printf '%s' "${UBUNTU_CODENAME:-${VERSION_CODENAME}}")"
    printf 'deb [arch=%s signed-by=%s] %s %s stable\n' \
        "${architecture}" "${KEYRING}" "${DOCKER_APT_URL}" "${codename}" >"${SOURCES_FILE}"
}

install_docker() {
    log "Installing Docker Engine"
    apt-get update -q
    apt-get install -y -q docker-ce docker-ce-cli containerd.io docker-buildx-plugin docker-compose-plugin
    systemctl enable --now containerd.service docker.service
}

check_docker() {
    log "Running hello-world to check the installation"
    if ! docker run --rm hello-world; then
        log "docker run --rm hello-world failed: check 'systemctl status docker' and that the server can reach Docker Hub."
        exit 1
    fi
}

print_summary() {
    local address server_version compose_version
    address="$(hostname -I | awk '{print $1}')"
    server_version="$(docker version --format '{{.Server.Version}}')"
    compose_version="$(docker compose version --short)"
    cat <<SUMMARY

==================== Docker host is ready ====================
  Docker Engine:  ${server_version} (service: docker, enabled at boot)
  Compose plugin: ${compose_version} (docker compose ...)
  Connect:        ssh root@${address:-<server-ip>}, then run docker commands
  Ports:          none opened by this recipe; docker run -p HOST:CONTAINER publishes one
  Credentials:    none; other users need the docker group (root-equivalent access)
  Check:          docker run --rm hello-world succeeded
===============================================================
SUMMARY
}

main() {
    require_root
    remove_conflicting_packages
    add_docker_repository
    install_docker
    check_docker
    print_summary
}

main "$@"
