#!/usr/bin/env python3
"""Checks on rendered manifests that schema validation cannot make
(run by scripts/check-k8s).

  check-rendered.py same A B        two renders agree, generated names'
                                    hash suffixes aside
  check-rendered.py rules FILE      Chorus's own rules on one render
"""
import base64
import json
import sys

import yaml

errors = []


def load(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def same(a, b):
    def norm(path):
        docs = load(path)
        text = json.dumps(docs, sort_keys=True)
        for d in docs:
            if d["kind"] in ("ConfigMap", "Secret"):
                n = d["metadata"]["name"]
                text = text.replace(f'"{n}"', f'"{n[:-11]}"')
        return sorted(json.dumps(x, sort_keys=True) for x in json.loads(text))

    if norm(a) != norm(b):
        errors.append(f"{a} and {b} differ: k8s/render-fallback.py no longer matches kustomize")


def rules(path):
    docs = load(path)
    by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    named = lambda kind, prefix: next(  # noqa: E731
        (d for (k, n), d in by.items() if k == kind and (n == prefix or n.startswith(prefix + "-"))), None)
    config = named("ConfigMap", "chorus-config")["data"]
    secret = named("Secret", "chorus-secrets")
    if secret is not None:
        data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
        if len(data["CHORUS_JWT_SECRET"].encode()) < 32:
            errors.append("CHORUS_JWT_SECRET shorter than 32 bytes")
        if len(data["CHORUS_INTERNAL_TOKEN"]) < 32:
            errors.append("CHORUS_INTERNAL_TOKEN shorter than 32 characters")

    for name, addr_var, public, admin in (("chorus-api", "CHORUS_API_ADDR", 8080, 9090),
                                          ("chorus-gateway", "CHORUS_GATEWAY_ADDR", 8081, 9091)):
        dep = by[("Deployment", name)]
        pod = dep["spec"]["template"]["spec"]
        c = pod["containers"][0]
        env = {e["name"]: e for e in c.get("env", [])}
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        if env[addr_var].get("value") != f"0.0.0.0:{public}" or env["CHORUS_ADMIN_ADDR"].get("value") != f"0.0.0.0:{admin}":
            errors.append(f"{name}: listen addresses do not match the container ports")
        for probe, want in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
            get = c[probe]["httpGet"]
            if get["path"] != want or ports.get(get["port"]) != admin:
                errors.append(f"{name}: {probe} must be {want} on the admin port")
        for e in env.values():
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref and secret is not None and ref["name"] == secret["metadata"]["name"] and ref["key"] not in secret["data"]:
                errors.append(f"{name}: Secret has no key {ref['key']}")
        sleep = int(c["lifecycle"]["preStop"]["exec"]["command"][-1])
        if name == "chorus-gateway":
            drain = int(env.get("CHORUS_DRAIN_SECONDS", {}).get("value") or config.get("CHORUS_DRAIN_SECONDS", 20))
            # 10.5 s after the drain: its last closes (up to 5 s) and the
            # wait for the last clients to be back (5.5 s) before the
            # gateway withdraws its presence.
            if pod["terminationGracePeriodSeconds"] < sleep + drain + 11:
                errors.append(f"{name}: terminationGracePeriodSeconds must exceed preStop {sleep} s + drain {drain} s + 11 s")
    # Services select pods and name ports that exist.
    for (kind, n), svc in by.items():
        if kind != "Service":
            continue
        pods = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")
                and svc["spec"]["selector"].items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        if not pods:
            errors.append(f"Service {n} selects no pods")
        for p in svc["spec"]["ports"]:
            names = {cp.get("name") for c in pods[0]["spec"]["template"]["spec"]["containers"] for cp in c["ports"]} if pods else set()
            if isinstance(p["targetPort"], str) and p["targetPort"] not in names:
                errors.append(f"Service {n}: no container port {p['targetPort']}")
    # The CRDs, which the schema validation skips: the ServiceMonitor finds
    # both admin Services by a port that exists, and every rule is whole.
    for (kind, n), sm in by.items():
        if kind != "ServiceMonitor":
            continue
        sel = sm["spec"]["selector"]["matchLabels"].items()
        found = {d["metadata"]["name"] for d in docs if d["kind"] == "Service"
                 and sel <= d["metadata"].get("labels", {}).items()
                 and any(p.get("name") == sm["spec"]["endpoints"][0]["port"] for p in d["spec"]["ports"])}
        if found != {"chorus-api-admin", "chorus-gateway-admin"}:
            errors.append(f"ServiceMonitor {n} selects {sorted(found)}, not the two admin Services")
    for (kind, n), pr in by.items():
        if kind != "PrometheusRule":
            continue
        for g in pr["spec"]["groups"]:
            for r in g["rules"]:
                alerting = set(r) <= {"alert", "expr", "for", "labels", "annotations"} and r.get("alert")
                recording = set(r) <= {"record", "expr", "labels"} and r.get("record")
                if not (alerting or recording) or not r.get("expr"):
                    errors.append(f"PrometheusRule {n}: malformed rule {r}")
    for (kind, n), ing in by.items():
        if kind != "Ingress":
            continue
        ann = ing["metadata"].get("annotations", {})
        for a in ("proxy-read-timeout", "proxy-send-timeout"):
            if int(ann.get(f"nginx.ingress.kubernetes.io/{a}", 0)) < 3600:
                errors.append(f"Ingress {n}: {a} must be at least 3600")
        for rule in ing["spec"]["rules"]:
            for p in rule["http"]["paths"]:
                backend = p["backend"]["service"]
                if p["path"] not in ("/api", "/ws") or backend["name"].endswith("-admin") or backend["port"].get("name") == "admin":
                    errors.append(f"Ingress {n}: routes {p['path']} to {backend}: only /api and /ws to public ports")


if __name__ == "__main__":
    if sys.argv[1:2] == ["same"] and len(sys.argv) == 4:
        same(sys.argv[2], sys.argv[3])
    elif sys.argv[1:2] == ["rules"] and len(sys.argv) == 3:
        rules(sys.argv[2])
    else:
        sys.exit(__doc__)
    for e in errors:
        print(f"check-rendered: {e}", file=sys.stderr)
    sys.exit(1 if errors else 0)
