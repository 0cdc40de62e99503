#!/usr/bin/env python3
"""Renders a kustomization like `kubectl kustomize DIR`, for machines
without kubectl (scripts/check-k8s uses the real tool when it is there and
then checks that this script agrees with it).

Only the subset k8s/ uses is implemented: resources (files and
directories), namespace, labels (metadata only), configMapGenerator and
secretGenerator with literals (behavior create/merge, hash-suffixed names,
references rewritten), images, and JSON 6902 patches with a kind/name
target. Anything else is refused, never ignored.

Usage: render-fallback.py DIR > out.yaml
"""
import base64
import hashlib
import json
import os
import re
import sys

import yaml

KNOWN = {"apiVersion", "kind", "namespace", "labels", "resources",
         "configMapGenerator", "secretGenerator", "images", "patches"}
CLUSTER_SCOPED = {"Namespace"}


def fail(msg):
    sys.exit(f"render-fallback: {msg}")


def load_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def generate(gen, kind):
    data = {}
    for lit in gen.get("literals", []):
        k, _, v = lit.partition("=")
        data[k] = v
    extra = set(gen) - {"name", "literals", "behavior"}
    if extra:
        fail(f"unsupported generator fields {sorted(extra)}")
    obj = {"apiVersion": "v1", "kind": kind, "metadata": {"name": gen["name"]}}
    if kind == "Secret":
        obj["type"] = "Opaque"
    obj["data"] = data
    obj["__generated"] = gen["name"]
    return obj


def render(d):
    k = load_docs(os.path.join(d, "kustomization.yaml"))[0]
    unknown = set(k) - KNOWN
    if unknown:
        fail(f"{d}: unsupported kustomization fields {sorted(unknown)}")
    out = []
    for r in k.get("resources", []):
        p = os.path.join(d, r)
        out.extend(render(p) if os.path.isdir(p) else load_docs(p))
    for field, kind in (("configMapGenerator", "ConfigMap"), ("secretGenerator", "Secret")):
        for gen in k.get(field, []):
            new = generate(gen, kind)
            behavior = gen.get("behavior", "create")
            old = [o for o in out if o["kind"] == kind and o.get("__generated") == gen["name"]]
            if behavior == "merge":
                if not old:
                    fail(f"{d}: merge into missing {kind} {gen['name']}")
                old[0]["data"].update(new["data"])
            elif behavior == "create":
                if old:
                    fail(f"{d}: {kind} {gen['name']} generated twice")
                out.append(new)
            else:
                fail(f"{d}: unsupported behavior {behavior}")
    for patch in k.get("patches", []):
        t = patch["target"]
        if set(t) - {"kind", "name"} or set(patch) - {"target", "patch"}:
            fail(f"{d}: unsupported patch {patch}")
        ops = yaml.safe_load(patch["patch"])
        for o in out:
            if o["kind"] == t["kind"] and re.fullmatch(t["name"], o["metadata"]["name"]):
                for op in ops:
                    json_patch(o, op)
    if "namespace" in k:
        for o in out:
            if o["kind"] not in CLUSTER_SCOPED:
                o["metadata"]["namespace"] = k["namespace"]
    for lab in k.get("labels", []):
        if lab.get("includeSelectors") or lab.get("includeTemplates"):
            fail(f"{d}: only metadata labels are supported")
        for o in out:
            o["metadata"].setdefault("labels", {}).update(lab["pairs"])
    for img in k.get("images", []):
        if set(img) - {"name", "newName", "newTag"}:
            fail(f"{d}: unsupported image fields {img}")
        for c in containers(out):
            name, tag = split_image(c["image"])
            if name == img["name"]:
                tag = img.get("newTag", tag)
                c["image"] = img.get("newName", name) + (f":{tag}" if tag else "")
    return out


def split_image(image):
    if "@" in image:
        fail(f"image digests are not supported: {image}")
    head, _, last = image.rpartition("/")
    if ":" in last:
        last, tag = last.split(":", 1)
    else:
        tag = None
    return (f"{head}/{last}" if head else last), tag


def json_patch(obj, op):
    if op["op"] not in ("replace", "add"):
        fail(f"unsupported patch op {op['op']}")
    parts = op["path"].strip("/").split("/")
    cur = obj
    for p in parts[:-1]:
        cur = cur[int(p)] if isinstance(cur, list) else cur[p]
    if op["op"] == "replace" and parts[-1] not in cur:
        fail(f"replace of missing {op['path']}")
    cur[parts[-1]] = op["value"]


def pod_specs(objs):
    for o in objs:
        spec = o.get("spec", {})
        if o["kind"] in ("Deployment", "StatefulSet", "Job", "DaemonSet"):
            yield spec["template"]["spec"]


def containers(objs):
    for ps in pod_specs(objs):
        yield from ps.get("initContainers", []) + ps.get("containers", [])


def finish(objs):
    renames = {}
    for o in objs:
        base = o.pop("__generated", None)
        if base is None:
            continue
        if o["kind"] == "Secret":
            o["data"] = {k: base64.b64encode(v.encode()).decode() for k, v in o["data"].items()}
        digest = hashlib.sha256(json.dumps(o, sort_keys=True).encode()).hexdigest()
        name = f"{base}-{digest[:10]}"
        renames[(o["kind"], base)] = name
        o["metadata"]["name"] = name
    for c in containers(objs):
        for ef in c.get("envFrom", []):
            for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                if key in ef:
                    ef[key]["name"] = renames.get((kind, ef[key]["name"]), ef[key]["name"])
        for e in c.get("env", []):
            vf = e.get("valueFrom", {})
            for kind, key in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
                if key in vf:
                    vf[key]["name"] = renames.get((kind, vf[key]["name"]), vf[key]["name"])
    for ps in pod_specs(objs):
        for v in ps.get("volumes", []):
            if "configMap" in v or "secret" in v:
                fail("volume references to generated objects are not supported")
    return objs


if __name__ == "__main__":
    if len(sys.argv) != 2:
        fail("usage: render-fallback.py DIR")
    yaml.safe_dump_all(finish(render(sys.argv[1])), sys.stdout, sort_keys=True)
