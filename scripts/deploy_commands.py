#!/usr/bin/env python3
"""Checks the deployment examples under deploy/ and prints the segmenter command line each
one runs, as JSON ({"cron": [args...], ...}: the arguments after the binary).

usage: deploy_commands.py DEPLOY_DIR DS

DS is the logical date Airflow would render for `{{ ds }}`.

Checks: the cron line has five time fields, a user and a command; the systemd unit and timer
have their sections and keys; the Airflow DAG is valid Python; the Kubernetes manifest is a
CronJob with concurrencyPolicy Forbid and its credentials from a Secret. tests/it/deploy.rs
then runs every command line against a test shop, so each one is a command segmenter accepts.
"""
import ast
import json
import pathlib
import shlex
import sys

import yaml


def after_binary(tokens):
    """The arguments after the segmenter binary, without shell redirections."""
    for i, t in enumerate(tokens):
        if t == "segmenter" or t.endswith("/segmenter"):
            args = tokens[i + 1:]
            return [a for a in args if not (a.startswith(">") or a.startswith("2>"))]
    raise SystemExit(f"no segmenter command in {tokens}")


def cron(path):
    lines = [
        l for l in path.read_text().splitlines()
        if l.strip() and not l.startswith("#") and "=" not in l.split()[0]
    ]
    assert len(lines) == 1, lines
    fields = lines[0].split(None, 6)
    assert len(fields) == 7, f"minute hour day month weekday user command: {lines[0]}"
    return after_binary(shlex.split(fields[6]))


def unit(path, sections):
    current, keys = None, {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            current = line.strip("[]")
            continue
        key, sep, value = line.partition("=")
        assert sep and current, f"{path}: not key=value inside a section: {line}"
        keys[(current, key)] = value
    for section, key in sections:
        assert (section, key) in keys, f"{path}: [{section}] {key}= missing"
    return keys


def airflow(path, ds):
    tree = ast.parse(path.read_text(), filename=str(path))
    commands = [
        ast.literal_eval(k.value)
        for node in ast.walk(tree) if isinstance(node, ast.Call)
        for k in node.keywords if k.arg == "bash_command"
    ]
    assert len(commands) == 1, commands
    return after_binary(shlex.split(commands[0].replace("{{ ds }}", ds)))


def kubernetes(path):
    doc = yaml.safe_load(path.read_text())
    assert doc["kind"] == "CronJob" and doc["apiVersion"] == "batch/v1", doc["kind"]
    spec = doc["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    [container] = spec["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    secrets = [e["secretRef"]["name"] for e in container.get("envFrom", []) if "secretRef" in e]
    assert secrets, "credentials come from a Secret"
    return container["args"]


def main():
    root = pathlib.Path(sys.argv[1])
    service = unit(root / "systemd/segmenter.service", [("Service", "ExecStart"), ("Service", "Type")])
    unit(root / "systemd/segmenter.timer", [("Timer", "OnCalendar"), ("Install", "WantedBy")])
    print(json.dumps({
        "cron": cron(root / "cron/segmenter.cron"),
        "systemd": after_binary(shlex.split(service[("Service", "ExecStart")])),
        "airflow": airflow(root / "airflow/segmenter_dag.py", sys.argv[2]),
        "kubernetes": kubernetes(root / "kubernetes/cronjob.yaml"),
    }))


if __name__ == "__main__":
    main()
