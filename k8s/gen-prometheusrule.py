#!/usr/bin/env python3
"""Writes the PrometheusRule for the Prometheus Operator from the same rule
file a plain Prometheus loads (deploy/prometheus/rules.yml), so the two can
never drift: scripts/check-k8s regenerates it and fails on a difference.
Usage: k8s/gen-prometheusrule.py [OUT] (default k8s/monitoring/prometheusrule.yaml)."""

import sys

import yaml

HEADER = """# Generated from deploy/prometheus/rules.yml by k8s/gen-prometheusrule.py:
# edit the rules there and run the script; scripts/check-k8s fails when this
# file and the rules differ.
"""


def main() -> None:
    out = sys.argv[1] if len(sys.argv) > 1 else "k8s/monitoring/prometheusrule.yaml"
    with open("deploy/prometheus/rules.yml") as f:
        rules = yaml.safe_load(f)
    doc = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "chorus"},
        "spec": {"groups": rules["groups"]},
    }
    with open(out, "w") as f:
        f.write(HEADER)
        yaml.safe_dump(doc, f, sort_keys=False, width=100)


if __name__ == "__main__":
    main()
