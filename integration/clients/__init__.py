"""Helpers for the client tests (podman, containerd `ctr`, libcni): plugin directories, a busybox
rootfs and OCI image made locally (no registry is reachable), and state checks after DEL."""
