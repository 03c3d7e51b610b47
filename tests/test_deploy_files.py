"""The deployment files (deploy/): they parse, every flag and environment variable they use is
one the commands accept, their security settings hold, and the image's start-up command lines
run outside a container (no docker on this machine: the image itself is not built here)."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import secrets
import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from authsvc import cli as authsvc_cli
from payments_svc import cli as payments_cli
from tests.helpers import Command, create_client, free_port

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
IMAGE_DATA_DIR = "/var/lib/authsvc"
ENV_NAME = re.compile(r"\b(?:AUTHSVC|PAYMENTS)_[A-Z0-9_]+\b")


def _yaml() -> Any:
    """PyYAML, loaded by name so that mypy needs no stubs; under CI its absence is a failure."""
    try:
        return importlib.import_module("yaml")
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("PyYAML is not installed: the deploy file tests need it (pyproject dev extra)")
        pytest.skip("PyYAML is not installed (pip install pyyaml) : the deploy YAML files are not checked")


def load_all(name: str) -> list[dict[str, Any]]:
    docs = list(_yaml().safe_load_all((DEPLOY / name).read_text()))
    assert docs and all(isinstance(d, dict) for d in docs), name
    return docs


def env_file(name: str) -> dict[str, str]:
    values = {}
    for line in (DEPLOY / name).read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"{name}: not KEY=VALUE: {line!r}"
            values[key.strip()] = value.strip()
    return values


def compose() -> dict[str, Any]:
    (doc,) = load_all("docker-compose.yml")
    return doc


AUTHSVC_K8S = "k8s/authsvc.yaml"
PAYMENTS_K8S = "k8s/payments-svc.yaml"


def k8s(kind: str, name: str = AUTHSVC_K8S) -> dict[str, Any]:
    (doc,) = [d for d in load_all(name) if d["kind"] == kind]
    return doc


def deployment_container(name: str = AUTHSVC_K8S) -> dict[str, Any]:
    (container,) = k8s("Deployment", name)["spec"]["template"]["spec"]["containers"]
    assert isinstance(container, dict)
    return container


def payments_container_command() -> tuple[str, list[str], dict[str, str]]:
    """(command, argv, environment) of the payments-svc Deployment's container; a value from a
    Secret stands as "x"."""
    container = deployment_container(PAYMENTS_K8S)
    (command,) = container["command"]
    return command, container["args"], {e["name"]: e.get("value", "x") for e in container["env"]}


def dockerfile_final_stage() -> list[str]:
    """The instructions of the Dockerfile's last stage, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    froms = [i for i, ln in enumerate(lines) if ln.upper().startswith("FROM ")]
    assert len(froms) >= 2, "the Dockerfile is not multi-stage"
    return lines[froms[-1] :]


def parsers(env: Mapping[str, str]) -> dict[str, argparse.ArgumentParser]:
    return {"authsvc": authsvc_cli.build_parser(env), "payments-svc": payments_cli.build_parser(env)}


def help_texts(parser: argparse.ArgumentParser) -> Iterator[str]:
    yield parser.format_help()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from help_texts(sub)


def accepted_env(command: str) -> set[str]:
    """The AUTHSVC_*/PAYMENTS_* variables a command's help names (each flag says its variable)."""
    return {m for text in help_texts(parsers({})[command]) for m in ENV_NAME.findall(text)}


def parse(command: str, argv: list[str], env: Mapping[str, str]) -> argparse.Namespace:
    """Parse as the command would; an unknown flag or a bad value fails the test, not exits."""
    try:
        return parsers(env)[command].parse_args(argv)
    except SystemExit as exc:
        raise AssertionError(f"{command} refuses {argv!r} (exit {exc.code})") from None


def job_command_lines() -> list[list[str]]:
    """The `authsvc ...` command lines of the create-clients job's shell script."""
    script = compose()["services"]["create-clients"]["command"][0]
    lines = []
    for raw in script.splitlines():
        line = raw.strip()
        if line.startswith("authsvc "):
            lines.append(shlex.split(re.split(r"\s[|>]\s", line)[0]))
    assert len(lines) == 2, script
    return lines


def compose_commands() -> list[tuple[str, list[str], dict[str, str]]]:
    """(command, argv, environment) of every container running authsvc or payments-svc."""
    services = compose()["services"]
    out = []
    for name in ("authsvc", "payments"):
        service = services[name]
        entry = service.get("entrypoint", ["authsvc"])
        env = dict(service.get("environment", {}))
        for f in [service["env_file"]] if "env_file" in service else []:
            env.update(env_file(f + ".example"))
        out.append((entry[0], [*entry[1:], *service["command"]], env))
    for argv in job_command_lines():
        out.append(("authsvc", argv[1:], env_file("authsvc.env.example")))
    container = deployment_container()
    out.append(("authsvc", container["args"], {e["name"]: e.get("value", "x") for e in container["env"]}))
    out.append(payments_container_command())
    return out


# ---- the files parse, and use only what the commands accept -------------------------------


def test_every_command_line_parses_with_the_commands_own_parsers() -> None:
    seen = set()
    for command, argv, env in compose_commands():
        args = parse(command, argv, {k: v for k, v in env.items() if "KEK" not in k})
        seen.add((command, args.command if hasattr(args, "command") else argv[0]))
    assert {c for c, _ in seen} == {"authsvc", "payments-svc"}


def test_every_environment_variable_is_one_the_commands_accept() -> None:
    accepted = {"authsvc": accepted_env("authsvc"), "payments-svc": accepted_env("payments-svc")}
    assert "AUTHSVC_KEK" in accepted["authsvc"] and "PAYMENTS_LISTEN" in accepted["payments-svc"]
    used: list[tuple[str, str]] = []
    for command, _argv, env in compose_commands():
        used += [(command, name) for name in env if ENV_NAME.fullmatch(name)]
    # and every AUTHSVC_*/PAYMENTS_* named anywhere in deploy/ (comments, the Dockerfile's ENV)
    for path in DEPLOY.rglob("*"):
        if path.is_file():
            for name in ENV_NAME.findall(path.read_text()):
                used.append(("authsvc" if name.startswith("AUTHSVC_") else "payments-svc", name))
    unknown = sorted({(c, n) for c, n in used if n not in accepted[c]})
    assert not unknown, f"variables the commands do not read: {unknown}"


def test_the_env_values_are_read_as_given() -> None:
    """The compose file's environment reaches the parsers (names and values both valid)."""
    for command, argv, env in compose_commands():
        if command == "payments-svc":
            args = parse(command, argv, env)
            assert args.issuer == env["PAYMENTS_ISSUER"]
            assert args.audience == env["PAYMENTS_AUDIENCE"]
            assert args.insecure and args.insecure_token_service
    auth_env = compose()["services"]["authsvc"]["environment"]
    assert auth_env["AUTHSVC_ISSUER"] == compose()["services"]["payments"]["environment"]["PAYMENTS_ISSUER"]


def test_no_real_secret_is_shipped() -> None:
    """The env file examples and the Secret hold placeholders that authsvc would refuse."""
    kek_values = [env_file("authsvc.env.example")["AUTHSVC_KEK"], k8s_secret()["stringData"]["kek"]]
    for value in kek_values:
        assert not re.fullmatch(r"[0-9a-fA-F]{64}", value), "a usable KEK is committed"
        assert "REPLACE" in value
    assert "REPLACE" in env_file("postgres.env.example")["POSTGRES_PASSWORD"]
    assert "REPLACE" in k8s_secret()["stringData"]["database-url"]
    payments = k8s_secret("payments-svc")["stringData"]
    assert set(payments) == {"database-url", "client-secret"}
    assert all("REPLACE" in value for value in payments.values())
    assert not payments["client-secret"].startswith("authsvc_cs_"), "a client secret is committed"
    # the real env files never reach a build context
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    assert next(ln for ln in ignore if not ln.startswith("#")) == "*", "the ignore file is not an allowlist"
    assert "**/*.env" in ignore and "**/*.key" in ignore


TMPDIR = "/tmp"  # in the manifest: its memory emptyDir, not a host directory


def tmpdir_volume(manifest: str) -> tuple[str, dict[str, Any]]:
    """TMPDIR of the manifest's container, and the emptyDir mounted there. Fails the test unless
    TMPDIR is set, is the mount path of a writable volume mount, and that volume is an emptyDir
    with a size limit: on a read-only root filesystem nothing else can hold the files."""
    pod = k8s("Deployment", manifest)["spec"]["template"]["spec"]
    container = deployment_container(manifest)
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    assert env.get("TMPDIR"), f"{manifest}: TMPDIR is not set, and the root filesystem is read-only"
    mounts = [
        m
        for m in container.get("volumeMounts", [])
        if m["mountPath"].rstrip("/") == env["TMPDIR"].rstrip("/")
    ]
    assert len(mounts) == 1, f"{manifest}: no volume is mounted at TMPDIR={env['TMPDIR']}"
    (mount,) = mounts
    assert not mount.get("readOnly") and "subPath" not in mount, mount
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert "emptyDir" in volume, f"{manifest}: TMPDIR's volume {volume['name']} is not an emptyDir"
    assert volume["emptyDir"].get("sizeLimit"), f"{manifest}: TMPDIR's emptyDir has no sizeLimit"
    return env["TMPDIR"], volume["emptyDir"]


def test_workers_metrics_get_a_writable_tmpdir_on_the_read_only_root() -> None:
    """authsvc with --metrics-listen and more than one worker creates its workers' metrics
    directory in TMPDIR (prometheus_client multiprocess mode). The container's root is read-only,
    so TMPDIR must name a writable emptyDir; required whatever --workers says, since its default
    may be more than one (all usable cores). In memory, the volume counts against the memory
    limit: its sizeLimit must leave most of the limit to the process."""
    container = deployment_container()
    args = parse("authsvc", container["args"], {})
    assert args.metrics_listen is not None and hasattr(args, "workers")
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    path, empty_dir = tmpdir_volume(AUTHSVC_K8S)
    assert path == TMPDIR
    if empty_dir.get("medium") == "Memory":
        limit = container["resources"]["limits"]["memory"]
        assert _mebibytes(empty_dir["sizeLimit"]) * 8 <= _mebibytes(limit), (empty_dir, limit)
    # and the compose file, read-only too, would need the same once it serves metrics
    compose_auth = compose()["services"]["authsvc"]
    if parse("authsvc", compose_auth["command"], {}).metrics_listen is not None:
        assert compose_auth.get("environment", {}).get("TMPDIR") in compose_auth.get("tmpfs", [])


def _mebibytes(quantity: str) -> float:
    number, unit = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi)", quantity).groups()  # type: ignore[union-attr]
    return float(number) * {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024}[unit]


def k8s_secret(name: str = "authsvc") -> dict[str, Any]:
    (doc,) = [d for d in load_all("k8s/secret.example.yaml") if d["metadata"]["name"] == name]
    assert doc["kind"] == "Secret"
    return doc


# ---- the image and the manifests keep their promises --------------------------------------


def test_the_final_image_is_slim_non_root_and_writes_only_its_volume() -> None:
    stage = dockerfile_final_stage()
    text = "\n".join(stage)
    assert re.match(r"FROM \$\{PYTHON_IMAGE\}$", stage[0]), stage[0]
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.\d+-slim", (DEPLOY / "Dockerfile").read_text(), re.M)
    (user,) = [ln for ln in stage if ln.startswith("USER ")]
    assert user.split()[1].split(":")[0] not in ("0", "root"), user
    assert 'ENTRYPOINT ["authsvc"]' in stage
    assert f'VOLUME ["{IMAGE_DATA_DIR}"]' in stage
    assert f"AUTHSVC_DATA_DIR={IMAGE_DATA_DIR}" in text and f"PAYMENTS_DATA_DIR={IMAGE_DATA_DIR}" in text
    assert "PYTHONDONTWRITEBYTECODE=1" in text
    # no build tools, package installs or source tree in the final stage
    for tool in ("pip install", "apt-get", "gcc", "build-essential", "COPY . ", "COPY authsvc"):
        assert tool not in text, tool
    assert "COPY --from=builder /opt/authsvc /opt/authsvc" in stage


def test_the_deployment_probes_grpc_health_and_outlasts_the_drain() -> None:
    """Readiness: the native gRPC probe on the gRPC port. Liveness and startup: /livez on the
    management port, never gRPC health (it reports readiness: a database outage would restart
    every pod)."""
    deployment = k8s("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = deployment_container()
    args = parse("authsvc", container["args"], {})
    port = int(args.listen.rpartition(":")[2])
    assert container["readinessProbe"]["grpc"] == {"port": port}
    assert args.metrics_listen is not None
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe in ("startupProbe", "livenessProbe"):
        assert "grpc" not in container[probe], probe
        get = container[probe]["httpGet"]
        assert get["path"] == "/livez" and ports[get["port"]] == int(args.metrics_listen.rpartition(":")[2])
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] > args.grace_period + float(pre_stop[1])
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert sorted(m["mountPath"] for m in container["volumeMounts"]) == sorted([IMAGE_DATA_DIR, TMPDIR])
    secret_refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
    assert set(secret_refs) == {"AUTHSVC_KEK", "AUTHSVC_DATABASE_URL"}
    assert {r["key"] for r in secret_refs.values()} == set(k8s_secret()["stringData"])
    assert {r["name"] for r in secret_refs.values()} == {k8s_secret()["metadata"]["name"]}


@pytest.mark.parametrize("manifest", [AUTHSVC_K8S, PAYMENTS_K8S])
def test_services_budget_and_policy_select_the_pods(manifest: str) -> None:
    labels = k8s("Deployment", manifest)["spec"]["template"]["metadata"]["labels"]
    docs = load_all(manifest)
    assert {d["kind"] for d in docs} == {"Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy"}
    services = [d for d in docs if d["kind"] == "Service"]
    assert {s["spec"].get("clusterIP") for s in services} == {None, "None"}  # ClusterIP and headless
    for doc in docs:
        selector = {
            "Service": lambda d: d["spec"]["selector"],
            "PodDisruptionBudget": lambda d: d["spec"]["selector"]["matchLabels"],
            "NetworkPolicy": lambda d: d["spec"]["podSelector"]["matchLabels"],
            "Deployment": lambda d: d["spec"]["selector"]["matchLabels"],
        }[doc["kind"]](doc)
        assert selector.items() <= labels.items(), doc["kind"]
    budget, deployment = k8s("PodDisruptionBudget", manifest), k8s("Deployment", manifest)
    assert budget["spec"]["minAvailable"] < deployment["spec"]["replicas"]
    assert set(k8s("NetworkPolicy", manifest)["spec"]["policyTypes"]) == {"Ingress", "Egress"}


def test_the_payments_deployment_probes_its_management_port_and_outlasts_the_drain() -> None:
    """HTTP probes on --metrics-listen (they work with TLS on the serving ports too): readiness
    on /readyz, liveness and startup on /livez, never /readyz (a pod that lost the TokenService
    would be restarted for it); the grace outlasts preStop and --grace-period; non-root, a
    read-only root filesystem, no capabilities; the Secrets it names exist with those keys."""
    pod = k8s("Deployment", PAYMENTS_K8S)["spec"]["template"]["spec"]
    container = deployment_container(PAYMENTS_K8S)
    command, argv, env = payments_container_command()
    assert command == "payments-svc"
    args = parse(command, argv, env)
    assert args.metrics_listen is not None
    management = int(args.metrics_listen.rpartition(":")[2])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {
        "grpc": int(args.listen.rpartition(":")[2]),
        "http": int(args.http_listen.rpartition(":")[2]),
        "management": management,
    }
    paths = {}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert ports[get["port"]] == management, probe
        paths[probe] = get["path"]
    assert paths == {"startupProbe": "/livez", "readinessProbe": "/readyz", "livenessProbe": "/livez"}
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] > args.grace_period + float(pre_stop[1])
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    # the staleness bound written out is one the service accepts with its refresh interval
    assert float(env["PAYMENTS_JWKS_MAX_STALENESS"]) > args.jwks_max_age
    # the database URL from the Secret; the client secret from a file in a Secret volume that
    # the non-root user can read (group: the pod's fsGroup)
    secret = k8s_secret("payments-svc")
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
    assert refs == {"PAYMENTS_DATABASE_URL": {"name": "payments-svc", "key": "database-url"}}
    assert set(refs["PAYMENTS_DATABASE_URL"].values()) <= {secret["metadata"]["name"], *secret["stringData"]}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert mounts["data"]["mountPath"] == IMAGE_DATA_DIR
    secret_file = Path(args.client_secret_file)
    (mount,) = [m for m in mounts.values() if Path(m["mountPath"]) == secret_file.parent]
    assert mount["readOnly"] is True
    volume = volumes[mount["name"]]["secret"]
    assert volume["secretName"] == secret["metadata"]["name"]
    assert volume["items"] == [{"key": "client-secret", "path": secret_file.name}]
    assert volume["defaultMode"] == 0o440
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsUser"]


def selects(peer: dict[str, Any], pod_labels: dict[str, str]) -> bool:
    """Whether a NetworkPolicy peer (same namespace: a podSelector alone) selects pods with these
    labels."""
    if "podSelector" not in peer or "namespaceSelector" in peer or "ipBlock" in peer:
        return False
    wanted: dict[str, str] = peer["podSelector"].get("matchLabels", {})
    return bool(wanted) and wanted.items() <= pod_labels.items()


def test_the_payments_pods_and_the_token_service_let_each_other_through() -> None:
    """payments-svc reaches the TokenService by its Service name and port; its egress policy
    allows the TokenService's pods on that port, and its pods carry the label that
    authsvc.yaml's ingress policy admits. Merchants reach its gRPC and HTTP ports."""
    command, argv, env = payments_container_command()
    args = parse(command, argv, env)
    host, _, port = args.token_service.rpartition(":")
    (auth_service,) = [
        d for d in load_all(AUTHSVC_K8S) if d["kind"] == "Service" and d["metadata"]["name"] == host
    ]
    assert auth_service["spec"].get("clusterIP") != "None"
    (grpc_port,) = [p for p in auth_service["spec"]["ports"] if p["name"] == "grpc"]
    assert int(port) == grpc_port["port"]
    auth_pod_labels = k8s("Deployment")["spec"]["template"]["metadata"]["labels"]
    payments_pod_labels = k8s("Deployment", PAYMENTS_K8S)["spec"]["template"]["metadata"]["labels"]

    egress = k8s("NetworkPolicy", PAYMENTS_K8S)["spec"]["egress"]
    to_auth = [rule for rule in egress if any(selects(peer, auth_pod_labels) for peer in rule["to"])]
    assert to_auth, "no egress rule lets payments-svc reach the TokenService's pods"
    assert {p["port"] for rule in to_auth for p in rule["ports"]} >= {int(port)}

    auth_ingress = k8s("NetworkPolicy")["spec"]["ingress"]
    admitted = [
        rule for rule in auth_ingress if any(selects(peer, payments_pod_labels) for peer in rule["from"])
    ]
    assert admitted, "authsvc.yaml's NetworkPolicy does not admit the payments-svc pods"
    assert {p["port"] for rule in admitted for p in rule["ports"]} >= {int(port)}

    ingress = k8s("NetworkPolicy", PAYMENTS_K8S)["spec"]["ingress"]
    open_ports = {p["port"] for rule in ingress for p in rule["ports"]}
    listen_ports = {int(a.rpartition(":")[2]) for a in (args.listen, args.http_listen, args.metrics_listen)}
    assert open_ports == listen_ports


def test_compose_containers_are_read_only_and_wait_for_postgres() -> None:
    services = compose()["services"]
    assert services["postgres"]["healthcheck"]["test"][0] == "CMD-SHELL"
    for name in ("create-clients", "authsvc", "payments"):
        assert services[name]["read_only"] is True and services[name]["cap_drop"] == ["ALL"], name
    for name in ("create-clients", "authsvc"):
        assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy"
    job = services["payments"]["depends_on"]["create-clients"]
    assert job["condition"] == "service_completed_successfully"
    assert "postgres" not in services["payments"].get("env_file", ""), "payments needs no KEK"
    for port in [p for s in services.values() for p in s.get("ports", [])]:
        assert port.startswith("127.0.0.1:"), port


# ---- the start-up command lines run --------------------------------------------------------


def localised(argv: list[str], replacements: Mapping[str, str]) -> list[str]:
    """The argv with the container's listen addresses on free loopback ports and paths moved."""
    out = []
    for given in argv:
        arg = "127.0.0.1:0" if re.fullmatch(r"0\.0\.0\.0:\d+", given) else given
        for old, new in replacements.items():
            arg = arg.replace(old, new)
        out.append(arg)
    return out


def run_script(script: str, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["/bin/sh", "-ec", script], env=dict(env), capture_output=True, text=True, timeout=60, check=False
    )


def test_the_compose_start_up_runs_outside_a_container(tmp_path: Path, pg_url: str) -> None:
    """The compose file's own command lines and environment, on PostgreSQL: the job registers
    both clients (secrets in files, not in its output), authsvc serves, payments-svc verifies
    against it and reads its secret file, and both exit 0 on SIGTERM."""
    services = compose()["services"]
    bin_dir = str(Path(sys.executable).parent)
    kek = secrets.token_hex(32)
    base = {
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
        "HOME": str(tmp_path / "no-home"),  # never written: the data dir is the image's volume
    }
    if "PYTHONPATH" in os.environ:
        base["PYTHONPATH"] = os.environ["PYTHONPATH"]
    auth_data, payments_data, client_files = tmp_path / "authsvc", tmp_path / "payments", tmp_path / "clients"
    for d in (auth_data, payments_data, client_files):
        d.mkdir()
    auth_env = {**base, **env_file("authsvc.env.example"), **services["authsvc"]["environment"]}
    auth_env |= {"AUTHSVC_KEK": kek, "AUTHSVC_DATABASE_URL": pg_url, "AUTHSVC_DATA_DIR": str(auth_data)}

    script = services["create-clients"]["command"][0].replace(IMAGE_DATA_DIR, str(client_files))
    job_env = {**base, **env_file("authsvc.env.example"), "AUTHSVC_KEK": kek, "AUTHSVC_DATABASE_URL": pg_url}
    job = run_script(script, job_env)
    assert job.returncode == 0, job.stderr
    secret = (client_files / "payments-svc.secret").read_text().strip()
    assert secret and secret not in job.stdout + job.stderr
    assert (client_files / "payments-svc.secret").stat().st_mode & 0o077 == 0
    assert (client_files / "shop.json").stat().st_mode & 0o077 == 0
    # a second run (compose up again) registers nothing and succeeds
    again = run_script(script, job_env)
    assert again.returncode == 0, again.stderr

    auth = Command(localised(["authsvc", *services["authsvc"]["command"]], {}), auth_env)
    try:
        assert auth.http_port is not None
        payments_service = services["payments"]
        payments_env = {**base, **payments_service["environment"], "PAYMENTS_DATA_DIR": str(payments_data)}
        argv = localised(
            [*payments_service["entrypoint"], *payments_service["command"]],
            {"authsvc:50051": auth.target, "/run/authsvc-clients": str(client_files)},
        )
        payments = Command(argv, payments_env)
        assert payments.terminate() == 0, payments.output()
        assert secret not in payments.output()
    finally:
        code = auth.terminate()
    assert code == 0, auth.output()
    assert kek not in auth.output()
    assert list((tmp_path / "no-home").glob("*")) == []


def test_the_payments_manifest_start_up_runs_outside_a_container(tmp_path: Path, pg_url: str) -> None:
    """The payments-svc Deployment's own command line and environment, against a TokenService
    started as authsvc.yaml starts it and on PostgreSQL: it reads its secret file, fetches the keys
    and the revocation list, its probes answer as the manifest expects (/livez and /readyz 200),
    its logs are JSON, and it exits 0 on SIGTERM."""
    bin_dir = str(Path(sys.executable).parent)
    base = {"PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""), "HOME": str(tmp_path / "no-home")}
    if "PYTHONPATH" in os.environ:
        base["PYTHONPATH"] = os.environ["PYTHONPATH"]
    auth_env = {
        **base,
        "AUTHSVC_DATA_DIR": str(tmp_path / "authsvc"),
        "AUTHSVC_KEK": secrets.token_hex(32),
        **{e["name"]: e["value"] for e in deployment_container()["env"] if "value" in e},
    }
    clients = tmp_path / "clients"
    clients.mkdir()
    secret = create_client(auth_env, "payments-svc", "authsvc:revocations")
    (clients / "payments-svc.secret").write_text(secret + "\n")
    auth = Command(["authsvc", "serve", "--listen", "127.0.0.1:0"], auth_env)
    try:
        command, argv, env = payments_container_command()
        payments_env = {
            **base,
            **{k: v for k, v in env.items() if k != "PAYMENTS_DATABASE_URL"},
            "PAYMENTS_DATABASE_URL": pg_url,
            "PAYMENTS_DATA_DIR": str(tmp_path / "payments"),
        }
        argv = localised(
            [command, *argv], {"authsvc:50051": auth.target, "/run/authsvc-clients": str(clients)}
        )
        payments = Command(argv, payments_env)
        try:
            (line,) = [ln for ln in payments.log if "PaymentService listening on" in ln]
            event = json.loads(line)  # PAYMENTS_LOG_FORMAT=json
            match = re.search(r"metrics on 127\.0\.0\.1:(\d+)", event["message"])
            assert match is not None, line
            probes = f"http://127.0.0.1:{match.group(1)}"
            assert http_status(f"{probes}/livez") == 200
            assert http_status(f"{probes}/readyz") == 200, payments.output()
        finally:
            code = payments.terminate()
        output = payments.output()
        assert code == 0, output
        assert "revocation list:" in output, "it did not read the revocation list with its secret"
        assert secret not in output
    finally:
        auth.terminate()


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:  # noqa: S310 - a loopback test URL
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.parametrize("workers", [None, "2"], ids=["default-workers", "two-workers"])
def test_the_manifest_start_up_keeps_its_metrics_in_the_tmpdir_volume(
    tmp_path: Path, pg_url: str, workers: str | None
) -> None:
    """authsvc.yaml's own command line and environment (AUTHSVC_WORKERS as an operator would add
    it, or the default), on PostgreSQL, with a directory standing in for the TMPDIR emptyDir: it
    serves /livez and /readyz, keeps the workers' metrics files in that directory and nowhere
    else, and leaves it empty after SIGTERM."""
    container = deployment_container()
    volume = tmp_path / "tmp-volume"  # the emptyDir at TMPDIR
    volume.mkdir()
    bin_dir = str(Path(sys.executable).parent)
    env = {
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
        "HOME": str(tmp_path / "no-home"),
        **{e["name"]: e["value"] for e in container["env"] if "value" in e},
        "AUTHSVC_KEK": secrets.token_hex(32),
        "AUTHSVC_DATABASE_URL": pg_url,
        "AUTHSVC_DATA_DIR": str(tmp_path / "data"),
    }
    assert env["TMPDIR"] == TMPDIR
    env["TMPDIR"] = str(volume)
    if "PYTHONPATH" in os.environ:
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    if workers is not None:
        env["AUTHSVC_WORKERS"] = workers
    ports: dict[str, int] = {}

    def fixed_port(match: re.Match[str]) -> str:  # workers share fixed ports: never port 0
        ports[match.group(1)] = free_port()
        return f"127.0.0.1:{ports[match.group(1)]}"

    argv = [re.sub(r"^0\.0\.0\.0:(\d+)$", fixed_port, a) for a in container["args"]]
    management = ports[parse("authsvc", container["args"], {}).metrics_listen.rpartition(":")[2]]
    log = tmp_path / "serve.log"
    with log.open("w") as stderr:
        proc = subprocess.Popen(["authsvc", *argv], env=env, stderr=stderr)
    try:
        deadline = time.monotonic() + 60

        def counters() -> int:
            return len(list(volume.glob("authsvc-metrics-*/counter_*.db")))

        # ready, and (two workers) each worker's counters in the volume
        while http_status_or_none(f"http://127.0.0.1:{management}/readyz") != 200 or (
            workers == "2" and counters() < 2
        ):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"{counters()} counter files\n{log.read_text()}"
            time.sleep(0.2)
        assert http_status(f"http://127.0.0.1:{management}/livez") == 200
        assert http_status(f"http://127.0.0.1:{management}/metrics") == 200
    finally:
        proc.terminate()
        code = proc.wait(timeout=30)
    assert code == 0, log.read_text()
    assert list(volume.iterdir()) == [], "the metrics directory outlived the server"
    assert list((tmp_path / "no-home").glob("*")) == []


def http_status_or_none(url: str) -> int | None:
    try:
        return http_status(url)
    except OSError:
        return None
