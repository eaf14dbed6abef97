#!/usr/bin/env python3
"""The `docker run` arguments that give a container what deploy/k8s/daemonset.yaml gives the agent's pod:
its capabilities, seccomp/AppArmor/procMount, read-only root, user, memory limit, stop grace, environment
(spec.nodeName from --node-name), its volumes as bind mounts, and its command and args. So the container test
runs the image with the DaemonSet's own grants, and a change to them is tested.

Usage: daemonset_run_args.py DAEMONSET.yaml --node-name N [--host-path HOSTPATH=DIR ...] [--volume NAME=DIR ...]
hostPath volumes bind their path (or the DIR given for it); configMap, secret and emptyDir volumes need a
--volume NAME=DIR. Prints the arguments NUL-separated: the options, then "--", then the command's words
(which go after the image)."""

import argparse
import sys

import yaml


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("daemonset")
    ap.add_argument("--node-name", required=True)
    ap.add_argument("--host-path", action="append", default=[])
    ap.add_argument("--volume", action="append", default=[])
    a = ap.parse_args()
    host_paths = dict(x.split("=", 1) for x in a.host_path)
    volume_dirs = dict(x.split("=", 1) for x in a.volume)
    with open(a.daemonset) as f:
        ds = next(d for d in yaml.safe_load_all(f) if d and d.get("kind") == "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    pod_sc = pod.get("securityContext") or {}
    sc = c.get("securityContext") or {}
    out = []

    def fail(what):
        sys.exit(f"daemonset_run_args.py: {what}")

    if sc.get("privileged"):
        out.append("--privileged")
    caps = sc.get("capabilities") or {}
    for cap in caps.get("drop") or []:
        out += ["--cap-drop", cap]
    for cap in caps.get("add") or []:
        out += ["--cap-add", cap]
    seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
    if seccomp == "Unconfined":
        out += ["--security-opt", "seccomp=unconfined"]
    elif seccomp not in (None, "RuntimeDefault"):
        fail(f"seccompProfile {seccomp} is not mapped")
    apparmor = (sc.get("appArmorProfile") or pod_sc.get("appArmorProfile") or {}).get("type")
    if apparmor == "Unconfined":
        out += ["--security-opt", "apparmor=unconfined"]
    elif apparmor not in (None, "RuntimeDefault"):
        fail(f"appArmorProfile {apparmor} is not mapped")
    if sc.get("procMount") == "Unmasked":
        # Docker's name for the same runtime setting: no masked or read-only paths in /proc and /sys.
        out += ["--security-opt", "systempaths=unconfined"]
    if sc.get("allowPrivilegeEscalation") is False:
        out += ["--security-opt", "no-new-privileges"]
    if sc.get("readOnlyRootFilesystem"):
        out.append("--read-only")
    user = sc.get("runAsUser", pod_sc.get("runAsUser"))
    group = sc.get("runAsGroup", pod_sc.get("runAsGroup"))
    if user is not None:
        out += ["--user", f"{user}:{group if group is not None else user}"]
    memory = ((c.get("resources") or {}).get("limits") or {}).get("memory")
    if memory:
        out += ["--memory", memory.replace("Gi", "g").replace("Mi", "m")]
    if "terminationGracePeriodSeconds" in pod:
        out += ["--stop-timeout", str(pod["terminationGracePeriodSeconds"])]
    for e in c.get("env") or []:
        if "value" in e:
            out += ["-e", f"{e['name']}={e['value']}"]
        elif ((e.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath") == "spec.nodeName":
            out += ["-e", f"{e['name']}={a.node_name}"]
        else:
            fail(f"env {e['name']} is not mapped")
    volumes = {v["name"]: v for v in pod.get("volumes") or []}
    # Parents before children (/run/sandbox-agent before /run/sandbox-agent/ids).
    for m in sorted(c.get("volumeMounts") or [], key=lambda m: m["mountPath"]):
        v = volumes[m["name"]]
        if "hostPath" in v:
            src = host_paths.get(v["hostPath"]["path"], v["hostPath"]["path"])
        elif m["name"] in volume_dirs:
            src = volume_dirs[m["name"]]
        else:
            fail(f"volume {m['name']} needs --volume {m['name']}=DIR")
        if m.get("subPath"):
            fail(f"volumeMount {m['name']} has a subPath, which is not mapped")
        opts = "ro" if m.get("readOnly") else "rw"
        out += ["-v", f"{src}:{m['mountPath']}:{opts}"]
    command = c.get("command") or []
    if command:
        out += ["--entrypoint", command[0]]
    out.append("--")
    out += command[1:] + (c.get("args") or [])
    sys.stdout.write("\0".join(out) + "\0")


if __name__ == "__main__":
    main()
