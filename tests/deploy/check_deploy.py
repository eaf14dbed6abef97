#!/usr/bin/env python3
"""Structural checks of deploy/: the Kubernetes manifests, the systemd unit and the Dockerfile, against each
other and against the agent's config (deploy/fleet.textproto and the ConfigMap's copy).

Usage: check_deploy.py REPO_ROOT
Prints one line per problem ("<file>: <what is wrong>") and exits 1 if there is any. The textproto files are
parsed by protoc against proto/duvo/sandbox/v1/agent_config.proto, so a misspelt field is a problem too.
Called by tests/deploy/validate_deploy.sh (ctest: deploy_validate)."""

import fnmatch
import os
import posixpath
import re
import shlex
import subprocess
import sys

import yaml

ROOT = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", ".."))
PROBLEMS = []


def problem(path, what):
    PROBLEMS.append(f"{path}: {what}")


def rel(path):
    return os.path.relpath(path, ROOT)


# ------------------------------------------------------------------------------------------------------------
# The agent's config, through protoc.

PROTO_DIR = os.path.join(ROOT, "proto")
PROTO_FILE = "duvo/sandbox/v1/agent_config.proto"
MESSAGE = "duvo.sandbox.v1.AgentConfig"


def canonical_textproto(text, origin):
    """The config as protoc prints it after a round trip (or None, with a problem, when it does not parse)."""
    enc = subprocess.run(["protoc", f"--encode={MESSAGE}", "-I", PROTO_DIR, PROTO_FILE], input=text.encode(),
                         capture_output=True)
    if enc.returncode != 0:
        problem(origin, "does not parse as " + MESSAGE + ": " + enc.stderr.decode().strip().replace("\n", "; "))
        return None
    dec = subprocess.run(["protoc", f"--decode={MESSAGE}", "-I", PROTO_DIR, PROTO_FILE], input=enc.stdout,
                         capture_output=True)
    if dec.returncode != 0:
        problem(origin, "protoc --decode failed: " + dec.stderr.decode().strip())
        return None
    return dec.stdout.decode()


def parse_canonical(text):
    """protoc's text output as nested dicts; repeated/map fields become lists."""
    root = {}
    stack = [root]
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if line == "}":
            stack.pop()
            continue
        m = re.fullmatch(r"(\w+) \{", line)
        if m:
            child = {}
            stack[-1].setdefault(m.group(1), []).append(child)
            stack.append(child)
            continue
        m = re.fullmatch(r"(\w+): (.*)", line)
        if m:
            value = m.group(2)
            if value.startswith('"'):
                value = value[1:-1].encode().decode("unicode_escape")
            stack[-1].setdefault(m.group(1), []).append(value)
    return root


def get(config, *path, default=None):
    node = config
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return default
        node = node[key][-1]
    return node


def port_of(address, what, origin):
    m = re.fullmatch(r".*:(\d+)", address or "")
    if not m:
        problem(origin, f"{what} '{address}' is not host:port")
        return None
    return int(m.group(1))


# ------------------------------------------------------------------------------------------------------------
# Files.

def load_yaml_docs(path):
    try:
        with open(path) as f:
            return [d for d in yaml.safe_load_all(f) if d is not None]
    except (OSError, yaml.YAMLError) as e:
        problem(rel(path), f"cannot be read as YAML: {e}")
        return []


def read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError as e:
        problem(rel(path), f"cannot be read: {e}")
        return ""


def under(path, directory):
    """Whether `path` lies strictly below `directory`, and the relative part."""
    directory = directory.rstrip("/")
    if path.startswith(directory + "/"):
        return path[len(directory) + 1:]
    return None


# ------------------------------------------------------------------------------------------------------------

def check_configs():
    """deploy/agent.textproto and deploy/fleet.textproto parse; returns fleet.textproto's canonical form."""
    for name in ("agent.textproto", "fleet.textproto"):
        path = os.path.join(ROOT, "deploy", name)
        text = read(path)
        canon = canonical_textproto(text, rel(path))
        if name == "fleet.textproto":
            fleet_canon = canon
    return fleet_canon


def check_kubernetes(fleet_canon):
    k8s = os.path.join(ROOT, "deploy", "k8s")
    kust_path = os.path.join(k8s, "kustomization.yaml")
    kust_docs = load_yaml_docs(kust_path)
    kust = kust_docs[0] if kust_docs else {}
    namespace = kust.get("namespace")

    # Every manifest, by kind and name (the Secret templates and the PodMonitor are outside the kustomization).
    objects = {}
    for fname in sorted(os.listdir(k8s)):
        if not fname.endswith(".yaml") or fname == "kustomization.yaml":
            continue
        for doc in load_yaml_docs(os.path.join(k8s, fname)):
            kind = doc.get("kind")
            name = (doc.get("metadata") or {}).get("name")
            if not kind or not name:
                problem(f"deploy/k8s/{fname}", "a document without kind or metadata.name")
                continue
            objects[(kind, name)] = (fname, doc)
            ns = doc["metadata"].get("namespace")
            if kind != "Namespace" and namespace and ns != namespace:
                problem(f"deploy/k8s/{fname}", f"{kind}/{name} is in namespace {ns!r}, the kustomization's is {namespace!r}")

    for res in kust.get("resources") or []:
        if not os.path.exists(os.path.join(k8s, res)):
            problem(rel(kust_path), f"resource {res} does not exist")
    listed = set(kust.get("resources") or [])
    for (kind, name), (fname, _) in objects.items():
        if kind == "Secret" and fname in listed:
            problem(rel(kust_path), f"lists the Secret template {fname}: re-applying would overwrite a real secret")
    if namespace and ("Namespace", namespace) not in objects:
        problem(rel(kust_path), f"namespace {namespace} has no Namespace manifest")

    daemonsets = [(f, d) for (k, _), (f, d) in objects.items() if k == "DaemonSet"]
    if len(daemonsets) != 1:
        problem("deploy/k8s", f"expected one DaemonSet, found {len(daemonsets)}")
        return
    ds_file, ds = daemonsets[0]
    where = f"deploy/k8s/{ds_file}"
    spec = ds.get("spec") or {}
    pod_meta = (spec.get("template") or {}).get("metadata") or {}
    pod = (spec.get("template") or {}).get("spec") or {}
    containers = pod.get("containers") or []
    if len(containers) != 1:
        problem(where, f"expected one container, found {len(containers)}")
        return
    c = containers[0]

    # Host namespaces: none.
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(field):
            problem(where, f"{field} is set: the agent needs no host namespace")
    if pod.get("automountServiceAccountToken") is not False:
        problem(where, "automountServiceAccountToken should be false (the agent does not use the Kubernetes API)")
    sa = pod.get("serviceAccountName")
    if sa and ("ServiceAccount", sa) not in objects:
        problem(where, f"serviceAccountName {sa} has no ServiceAccount manifest")

    # Selector and labels.
    match = ((spec.get("selector") or {}).get("matchLabels")) or {}
    labels = pod_meta.get("labels") or {}
    if not match or any(labels.get(k) != v for k, v in match.items()):
        problem(where, "spec.selector.matchLabels does not match the pod template's labels")

    # Image.
    image = c.get("image")
    if not image:
        problem(where, "the container has no image")
    else:
        images = {i.get("name"): i for i in kust.get("images") or []}
        if ":" not in image and "@" not in image and image not in images:
            problem(where, f"image {image!r} has no tag and no entry in kustomization.yaml's images")
        if image in images and not images[image].get("newName"):
            problem(rel(kust_path), f"images entry for {image} has no newName")

    # Update strategy: one node at a time, never two agents on a node.
    ru = ((spec.get("updateStrategy") or {}).get("rollingUpdate")) or {}
    if (spec.get("updateStrategy") or {}).get("type") != "RollingUpdate" or ru.get("maxUnavailable") != 1:
        problem(where, "updateStrategy should be RollingUpdate with maxUnavailable 1")
    if ru.get("maxSurge", 0) not in (0, "0", "0%"):
        problem(where, "updateStrategy.rollingUpdate.maxSurge must be 0: two agents must not share a node")

    # Security context: not privileged, but exactly the grants the agent uses (the comment at the top of
    # the DaemonSet says why; tests/container/run.sh runs the image with them).
    sc = c.get("securityContext") or {}
    pod_sc0 = pod.get("securityContext") or {}
    if sc.get("privileged"):
        problem(where, "the container is privileged: list the capabilities the agent uses instead")
    caps = sc.get("capabilities") or {}
    if caps.get("drop") != ["ALL"]:
        problem(where, "securityContext.capabilities.drop should be [ALL], with the agent's own list under add")
    added = caps.get("add") or []
    for cap in ("SYS_ADMIN", "SETUID", "SETGID"):
        if cap not in added:
            problem(where, f"securityContext.capabilities.add lacks {cap}, which every jail needs")
    if "SYS_RESOURCE" in added:
        problem(where, "SYS_RESOURCE is added: runtimes without it in their bounding set refuse the pod, and the "
                       "agent does without it")
    if "SYS_ADMIN" in added and sc.get("allowPrivilegeEscalation") is False:
        problem(where, "allowPrivilegeEscalation: false with SYS_ADMIN is rejected by the API")
    if sc.get("procMount") != "Unmasked":
        problem(where, "procMount is not Unmasked: every jail's /proc mount would fail")
    for field in ("seccompProfile", "appArmorProfile"):
        if ((sc.get(field) or pod_sc0.get(field) or {}).get("type")) != "Unconfined":
            problem(where, f"{field} is not Unconfined: the runtime's default refuses the jails' mounts")
    pod_sc = pod.get("securityContext") or {}
    if pod_sc.get("runAsNonRoot") or sc.get("runAsNonRoot"):
        problem(where, "runAsNonRoot is set, but the agent must run as root")

    # The config: the ConfigMap volume, the key the start command reads, and the text itself.
    volumes = {v.get("name"): v for v in pod.get("volumes") or []}
    mounts = c.get("volumeMounts") or []
    for m in mounts:
        if m.get("name") not in volumes:
            problem(where, f"volumeMount {m.get('name')} has no volume")
    command = " ".join((c.get("command") or []) + (c.get("args") or []))

    def volume_for(path):
        """(mount, volume, path relative to the mount) for the mount that holds `path`, the deepest one."""
        best = None
        for m in mounts:
            r = under(path, m.get("mountPath", "")) if m.get("mountPath") != path else ""
            if r is not None and (best is None or len(m["mountPath"]) > len(best[0]["mountPath"])):
                best = (m, volumes.get(m.get("name")) or {}, r)
        return best

    config_paths = re.findall(r"(/\S+\.textproto)", command)
    config_text = None
    config_origin = None
    for path in config_paths:
        found = volume_for(path)
        if not found:
            continue
        m, vol, relpath = found
        if "configMap" in vol:
            cm_name = vol["configMap"].get("name")
            key = m.get("subPath") or relpath
            for item in vol["configMap"].get("items") or []:
                if item.get("path") == relpath:
                    key = item.get("key")
            if ("ConfigMap", cm_name) not in objects:
                problem(where, f"volume {m['name']} uses ConfigMap {cm_name}, which has no manifest")
                continue
            cm_file, cm = objects[("ConfigMap", cm_name)]
            if key not in (cm.get("data") or {}):
                problem(f"deploy/k8s/{cm_file}", f"has no key {key!r}, which the DaemonSet reads as {path}")
                continue
            config_text = cm["data"][key]
            config_origin = f"deploy/k8s/{cm_file} (data.{key})"
    if config_text is None:
        problem(where, "the container's command does not read a config file from a ConfigMap volume "
                       f"(config paths in the command: {config_paths or 'none'})")
        return
    if "@NODE_NAME@" in config_text:
        env = {e.get("name"): e for e in c.get("env") or []}
        ref = ((env.get("NODE_NAME") or {}).get("valueFrom") or {}).get("fieldRef") or {}
        if ref.get("fieldPath") != "spec.nodeName":
            problem(where, "the ConfigMap's config uses @NODE_NAME@ but NODE_NAME is not set from spec.nodeName")
        if "@NODE_NAME@" not in command or "NODE_NAME" not in command.replace("@NODE_NAME@", ""):
            problem(where, "the ConfigMap's config uses @NODE_NAME@ but the start command does not replace it")
        for path in config_paths:
            found = volume_for(path)
            if found and "configMap" not in found[1] and found[0].get("readOnly"):
                problem(where, f"the rendered config {path} is on a read-only mount")
    cm_canon = canonical_textproto(config_text, config_origin)
    if cm_canon is None:
        return
    config = parse_canonical(cm_canon)

    # The ConfigMap's copy is deploy/fleet.textproto but for agent_id.
    if fleet_canon is not None:
        strip = lambda t: [l for l in t.splitlines() if not l.strip().startswith("agent_id:")]
        if strip(cm_canon) != strip(fleet_canon):
            import difflib
            diff = "; ".join(l for l in difflib.unified_diff(strip(fleet_canon), strip(cm_canon), lineterm="", n=0)
                             if l[:1] in "+-" and not l.startswith(("+++", "---")))
            problem(config_origin, f"differs from deploy/fleet.textproto beyond fleet.agent_id: {diff}")

    ports = {p.get("containerPort"): p for p in c.get("ports") or []}
    port_names = {p.get("name"): p.get("containerPort") for p in c.get("ports") or []}

    # Health: grpc probes on health_address's port, which must listen beyond loopback.
    health = get(config, "health_address")
    if not health:
        problem(config_origin, "health_address is empty: the DaemonSet's grpc probes need it")
    else:
        health_port = port_of(health, "health_address", config_origin)
        if health.startswith(("127.", "localhost", "[::1]")):
            problem(config_origin, f"health_address {health} is loopback: the kubelet probes the pod's IP")
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            p = c.get(probe)
            if p is None:
                if probe != "startupProbe":
                    problem(where, f"no {probe}")
                continue
            grpc = p.get("grpc")
            if not grpc:
                problem(where, f"{probe} is not a grpc probe (the agent serves grpc.health.v1 on {health})")
            elif grpc.get("port") != health_port:
                problem(where, f"{probe}.grpc.port {grpc.get('port')} is not health_address's port {health_port}")
        if health_port not in ports:
            problem(where, f"no containerPort {health_port} (health_address)")

    # Metrics: annotations, the named port, the PodMonitor.
    metrics = get(config, "metrics_address", default="127.0.0.1:9464")
    if metrics != "off":
        metrics_port = port_of(metrics, "metrics_address", config_origin)
        if metrics.startswith(("127.", "localhost")):
            problem(config_origin, f"metrics_address {metrics} is loopback: Prometheus scrapes the pod's IP")
        ann = pod_meta.get("annotations") or {}
        if ann.get("prometheus.io/scrape") == "true" and str(ann.get("prometheus.io/port")) != str(metrics_port):
            problem(where, f"prometheus.io/port {ann.get('prometheus.io/port')} is not metrics_address's port {metrics_port}")
        if port_names.get("metrics") != metrics_port:
            problem(where, f"the port named 'metrics' is {port_names.get('metrics')}, metrics_address's is {metrics_port}")
        for (kind, name), (fname, doc) in objects.items():
            if kind != "PodMonitor":
                continue
            pm_spec = doc.get("spec") or {}
            sel = ((pm_spec.get("selector") or {}).get("matchLabels")) or {}
            if any(labels.get(k) != v for k, v in sel.items()):
                problem(f"deploy/k8s/{fname}", "selector does not match the DaemonSet's pod labels")
            for ep in pm_spec.get("podMetricsEndpoints") or []:
                if ep.get("port") not in port_names:
                    problem(f"deploy/k8s/{fname}", f"endpoint port {ep.get('port')!r} is not a named container port")

    # Drain: the kubelet must wait longer than drain_grace_ms.
    drain_ms = int(get(config, "fleet", "drain_grace_ms", default="60000"))
    grace = pod.get("terminationGracePeriodSeconds", 30)
    if not grace > drain_ms / 1000:
        problem(where, f"terminationGracePeriodSeconds {grace} does not exceed fleet.drain_grace_ms ({drain_ms} ms)"
                       " plus time to report outcomes")

    # Files the config names that come from Secrets: mounted as directories (no subPath, so they update),
    # and the key exists in the Secret template.
    def check_secret_file(field, path):
        found = volume_for(path)
        if not found:
            problem(where, f"{field} {path} is not under any volumeMount")
            return
        m, vol, relpath = found
        if "secret" not in vol:
            problem(where, f"{field} {path} is mounted from volume {m['name']}, which is not a Secret")
            return
        if m.get("subPath"):
            problem(where, f"{field} {path} is mounted with subPath, which Kubernetes never updates")
        secret_name = vol["secret"].get("secretName")
        key = relpath
        for item in vol["secret"].get("items") or []:
            if item.get("path") == relpath:
                key = item.get("key")
        if ("Secret", secret_name) not in objects:
            problem(where, f"{field} comes from Secret {secret_name}, which has no template in deploy/k8s")
            return
        s_file, secret = objects[("Secret", secret_name)]
        keys = set((secret.get("data") or {}).keys()) | set((secret.get("stringData") or {}).keys())
        if key not in keys:
            problem(f"deploy/k8s/{s_file}", f"has no key {key!r}, which the config's {field} reads as {path}")

    token_file = get(config, "fleet", "token_file")
    if get(config, "fleet", "control_plane"):
        if not token_file:
            problem(config_origin, "fleet.token_file is empty")
    if token_file:
        check_secret_file("fleet.token_file", token_file)
    for field in ("ca_file", "cert_file", "key_file"):
        path = get(config, "fleet", "tls", field)
        if path:
            check_secret_file(f"fleet.tls.{field}", path)

    # State on the host (hostPath, the only one), the socket directory writable.
    state_dir = get(config, "state_dir", default="/var/lib/sandbox-agent")
    found = volume_for(state_dir + "/x")
    if not found or found[0].get("mountPath") != state_dir or "hostPath" not in found[1]:
        problem(where, f"state_dir {state_dir} is not a hostPath mount: the outbox must survive pod restarts")
    elif found[1]["hostPath"].get("type") != "DirectoryOrCreate":
        problem(where, f"the hostPath for {state_dir} should have type DirectoryOrCreate")
    # The uid-range lease locks (sandbox/id_range.h) must be the host's, shared by every agent on the node.
    ids_dir = "/run/sandbox-agent/ids"
    found = volume_for(ids_dir + "/x")
    if not found or found[0].get("mountPath") != ids_dir or (found[1].get("hostPath") or {}).get("path") != ids_dir:
        problem(where, f"{ids_dir} is not a hostPath mount of the host's {ids_dir}: two agents on a node could "
                       "lease the same host uid range")
    # The host's cgroupfs, read-write: runc mounts the container's own read-only.
    found = volume_for("/sys/fs/cgroup/x")
    if (not found or found[0].get("mountPath") != "/sys/fs/cgroup" or found[0].get("readOnly")
            or (found[1].get("hostPath") or {}).get("path") != "/sys/fs/cgroup"):
        problem(where, "the host's /sys/fs/cgroup is not mounted read-write at /sys/fs/cgroup: the agent cannot "
                       "create the session cgroups")
    for name, vol in volumes.items():
        if "hostPath" in vol and vol["hostPath"].get("path") not in (state_dir, ids_dir, "/sys/fs/cgroup"):
            problem(where, f"volume {name} mounts host path {vol['hostPath'].get('path')}: only state_dir, "
                           f"{ids_dir} and /sys/fs/cgroup should be")
    socket = get(config, "unix_socket", default="/run/sandbox-agent/agent.sock")
    if sc.get("readOnlyRootFilesystem"):
        found = volume_for(socket)
        if not found or found[0].get("readOnly"):
            problem(where, f"readOnlyRootFilesystem, but the socket directory of {socket} is not a writable mount")

    # The command runs the binary the image installs.
    if "/usr/local/bin/sandbox-agent serve" not in command:
        problem(where, "the container does not exec /usr/local/bin/sandbox-agent serve (the image's path)")
    return drain_ms


def check_systemd(drain_ms):
    path = os.path.join(ROOT, "deploy", "systemd", "sandbox-agent.service")
    where = rel(path)
    settings = {}
    for line in read(path).splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        settings.setdefault(key.strip(), []).append(value.strip())
    one = lambda key: (settings.get(key) or [None])[-1]

    exec_start = shlex.split(one("ExecStart") or "")
    if exec_start[:2] != ["/usr/local/bin/sandbox-agent", "serve"]:
        problem(where, "ExecStart should be /usr/local/bin/sandbox-agent serve ... (cmake --install's path)")
    if one("KillMode") != "mixed":
        problem(where, "KillMode should be mixed: SIGTERM to the agent alone (it drains), SIGKILL to all at the end")
    timeout = one("TimeoutStopSec")
    seconds = int(timeout) if timeout and timeout.isdigit() else None
    if seconds is None or not seconds > (drain_ms or 60000) / 1000:
        problem(where, f"TimeoutStopSec {timeout} does not exceed fleet.drain_grace_ms ({drain_ms} ms)")
    if not one("Delegate") or one("Delegate") == "no":
        problem(where, "Delegate= is not set: the agent creates the session cgroups below its own")
    if one("ExecReload") != "/bin/kill -HUP $MAINPID":
        problem(where, "ExecReload should send SIGHUP to the agent")
    if one("StateDirectory") != "sandbox-agent":
        problem(where, "StateDirectory should be sandbox-agent (/var/lib/sandbox-agent, the config's state_dir)")
    if one("RuntimeDirectory") == "sandbox-agent" and one("RuntimeDirectoryPreserve") not in ("yes", "true"):
        problem(where, "RuntimeDirectoryPreserve should be yes: /run/sandbox-agent/ids holds uid-range lease locks "
                       "other agents on the host may hold")
    for forbidden in ("ProtectKernelTunables", "ProtectKernelLogs", "ProtectControlGroups", "RestrictNamespaces",
                      "SystemCallFilter", "MemoryDenyWriteExecute", "ProtectHostname", "ProcSubset",
                      "ProtectProc", "PrivateUsers", "DynamicUser", "User"):
        if one(forbidden) not in (None, "no", "false", "default"):
            problem(where, f"{forbidden}={one(forbidden)} breaks the jails (see the comments in the unit)")


def dockerignore_patterns():
    patterns = []
    for line in read(os.path.join(ROOT, ".dockerignore")).splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            patterns.append(line.rstrip("/"))
    return patterns


def ignored(path, patterns):
    """Whether .dockerignore excludes `path` (or a directory above it); '!' exceptions are honoured."""
    parts = path.strip("/").split("/")
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        for i in range(1, len(parts) + 1):
            prefix = "/".join(parts[:i])
            if fnmatch.fnmatchcase(prefix, pat) or (pat.startswith("**/") and
                                                    fnmatch.fnmatchcase(prefix.split("/")[-1], pat[3:])):
                result = not negate
                break
    return result


def check_dockerfile():
    path = os.path.join(ROOT, "deploy", "Dockerfile")
    where = rel(path)
    text = read(path)
    # Join continuation lines; drop heredoc bodies (RUN <<'EOF' ... EOF) and comments.
    lines = []
    heredoc = None
    pending = ""
    for raw in text.splitlines():
        if heredoc:
            if raw.strip() == heredoc:
                heredoc = None
            continue
        if raw.lstrip().startswith("#") and not pending:
            continue
        m = re.search(r"<<-?'?\"?(\w+)'?\"?\s*$", raw)
        if m:
            heredoc = m.group(1)
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        lines.append(pending + raw)
        pending = ""

    # The engine's built-in frontend: a `# syntax=` line pulls a frontend image from a registry (an
    # air-gapped build machine has none), and the built-in frontend of older engines has no heredocs.
    if re.match(r"\s*#\s*syntax\s*=", text):
        problem(where, "has a '# syntax=' line: the build would pull a frontend image from a registry")
    if re.search(r"^\s*RUN\b.*<<", text, re.MULTILINE):
        problem(where, "a RUN heredoc: put the script in a file under deploy/ (the built-in frontend may lack them)")
    global_args = {}
    for line in lines:
        if re.match(r"\s*FROM\b", line, re.IGNORECASE):
            break
        m = re.fullmatch(r"\s*ARG\s+(\w+)(?:=(\S*))?\s*", line)
        if m:
            global_args[m.group(1)] = m.group(2) or ""

    patterns = dockerignore_patterns()
    stages = []
    has_stopsignal = False
    entrypoint = None
    copied_config = False
    for line in lines:
        words = line.split()
        if not words:
            continue
        instr = words[0].upper()
        if instr == "FROM":
            m = re.fullmatch(r"FROM\s+(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?\s*", line, re.IGNORECASE)
            if not m:
                problem(where, f"cannot read {line.strip()!r}")
                continue
            base, name = m.group(1), m.group(2)
            # A global ARG in the base (FROM binaries-${BINARIES}) is checked with its default value.
            base = re.sub(r"\$\{?(\w+)\}?", lambda v: global_args.get(v.group(1), v.group(0)), base)
            if base not in stages and base != "scratch" and not base.startswith("debian:12"):
                problem(where, f"stage base {base} is neither an earlier stage nor debian:12 / debian:12-slim")
            if name:
                if name in stages:
                    problem(where, f"stage name {name} is used twice")
                stages.append(name)
            else:
                stages.append(f"#{len(stages)}")
        elif instr in ("COPY", "ADD"):
            args = words[1:]
            flags = [a for a in args if a.startswith("--")]
            rest = [a for a in args if not a.startswith("--")]
            if len(rest) < 2:
                problem(where, f"{instr} without source and destination: {line.strip()!r}")
                continue
            sources, dest = rest[:-1], rest[-1]
            from_stage = next((f.split("=", 1)[1] for f in flags if f.startswith("--from=")), None)
            if from_stage is not None:
                if from_stage not in stages[:-1]:
                    problem(where, f"COPY --from={from_stage}: no earlier stage of that name (stages: {stages[:-1]})")
                continue
            for src in sources:
                full = os.path.join(ROOT, src)
                if src.startswith("build/"):
                    # Prepared by whoever builds with it (BINARIES=prebuilt: tests/container/run.sh); the
                    # context must carry it, though build/ is otherwise left out.
                    if ignored(src, patterns):
                        problem(where, f"{instr} source {src} is excluded by .dockerignore")
                    continue
                if not os.path.exists(full):
                    problem(where, f"{instr} source {src} does not exist in the build context (the repo root)")
                elif ignored(src, patterns):
                    problem(where, f"{instr} source {src} is excluded by .dockerignore")
                if src == "deploy/fleet.textproto" and dest == "/etc/sandbox-agent/agent.textproto":
                    copied_config = True
        elif instr == "STOPSIGNAL":
            has_stopsignal = words[1:] == ["SIGTERM"]
        elif instr == "ENTRYPOINT":
            entrypoint = line.split(None, 1)[1].strip()
    if len(stages) < 2:
        problem(where, "expected a builder and a runtime stage")
    if not has_stopsignal:
        problem(where, "no STOPSIGNAL SIGTERM (SIGTERM drains the agent)")
    if entrypoint != '["/usr/local/bin/sandbox-agent"]':
        problem(where, f"ENTRYPOINT {entrypoint} is not [\"/usr/local/bin/sandbox-agent\"] (what deploy/k8s runs)")
    if not copied_config:
        problem(where, "does not install deploy/fleet.textproto as /etc/sandbox-agent/agent.textproto")
    # The build context must keep what CMake needs and drop build trees.
    for needed in ("CMakeLists.txt", "cmake", "proto", "sandbox", "agent", "policies", "deploy/install-deps.sh"):
        if ignored(needed, patterns):
            problem(".dockerignore", f"excludes {needed}, which the image's build needs")
    for unwanted in (".git", "build", "build-deploy"):
        if not ignored(unwanted, patterns):
            problem(".dockerignore", f"does not exclude {unwanted}")


def main():
    fleet_canon = check_configs()
    drain_ms = check_kubernetes(fleet_canon)
    check_systemd(drain_ms)
    check_dockerfile()
    for p in PROBLEMS:
        print(p)
    return 1 if PROBLEMS else 0


if __name__ == "__main__":
    sys.exit(main())
