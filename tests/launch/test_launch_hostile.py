"""Hostile arguments to `scalekit launch` and `scalekit preflight`, and the listeners' default addresses.

A value with a newline must never become a shell command in an sbatch script (or end the #SBATCH block early), and
every bad argument gets exit code 2 with one line `scalekit <cmd>: error: ...` that names the flag. Legitimate
values with spaces and quotes are rendered quoted: the script parses with `bash -n`, bash reads the training
command back exactly, and the Kubernetes manifest round-trips through yaml.safe_load with its values intact.
The coordinator rendezvous and the preflight metrics server bind 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from scalekit.cli import launch as launch_cli
from scalekit.cli import preflight as preflight_cli
from scalekit.launch import k8s, slurm
from scalekit.parallel import distributed, rendezvous

REPO = Path(__file__).resolve().parents[2]
W = ["--workdir", "/tmp/sk-hostile-run"]


def _main(module, argv: list[str], capsys) -> tuple[int, str]:
    """Run a CLI main in-process: (exit code, stderr). An exception escaping main fails the test."""
    try:
        rc = module.main(argv)
    except SystemExit as e:  # argparse's own error path: usage block + exit, not one line
        rc = e.code
    return rc, capsys.readouterr().err


def _assert_refused(rc: int, err: str, prog: str, names: str) -> None:
    assert rc == 2, (rc, err)
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"want one line, got:\n{err}"
    assert lines[0].startswith(f"{prog}: error: "), lines[0]
    assert names in lines[0], (names, lines[0])


# (options before `--`, training args after it, what the message must name)
SLURM_HOSTILE = [
    (["--name", "run\nsrun rm -rf /"], [], "--name"),
    (["--name", "run\r"], [], "--name"),
    (["--name", "run\x00x"], [], "--name"),
    (["--name", "run\tx"], [], "--name"),
    (["--name", "run\x7f"], [], "--name"),
    (["--name", "a b"], [], "--name"),
    (["--name", "../../etc/x"], [], "--name"),
    (["--name", "a;id"], [], "--name"),
    (["--time", "04:00:00\n#SBATCH --qos=top"], [], "--time"),
    (["--time", "04:00:00\r"], [], "--time"),
    (["--time", "04:00\x00"], [], "--time"),
    (["--time", "four hours"], [], "--time"),
    (["--time", "1:2:3:4"], [], "--time"),
    (["--time", "10:75"], [], "--time"),
    (["--time", "1:00:60"], [], "--time"),
    (["--time", "1-25"], [], "--time"),
    (["--time", "1-"], [], "--time"),
    (["--time", "-5"], [], "--time"),
    (["--time", "04:00:00 --qos=x"], [], "--time"),
    (["--partition", "gpu\nid"], [], "--partition"),
    (["--partition", "gpu\r"], [], "--partition"),
    (["--partition", "gpu\x00"], [], "--partition"),
    (["--partition", "gpu debug"], [], "--partition"),
    (["--account", "acct\nid"], [], "--account"),
    (["--qos", "q\n"], [], "--qos"),
    (["--mem", "64G\nid"], [], "--mem"),
    (["--mem", "lots"], [], "--mem"),
    (["--env", "A=x\ny"], [], "--env"),
    (["--env", "A;id=1"], [], "--env"),
    (["--env", "NOVALUE"], [], "--env"),
    (["--sbatch", "--constraint=h100\nid"], [], "--sbatch"),
    (["--sbatch", "constraint=h100"], [], "--sbatch"),
    (["--python", "python\nid"], [], "--python"),
    (["--preflight", "--preflight-args", "'unclosed"], [], "--preflight-args"),
    (["--nodes", "0"], [], "--nodes"),
    (["--nodes", "-3"], [], "--nodes"),
    (["--nodes", "two"], [], "--nodes"),
    (["--gpus-per-node", "-1"], [], "--gpus-per-node"),
    (["--ntasks-per-node", "-1"], [], "--ntasks-per-node"),
    (["--cpus-per-task", "-2"], [], "--cpus-per-task"),
    (["--signal-seconds", "0"], [], "--signal-seconds"),
    (["--signal-seconds", "70000"], [], "--signal-seconds"),
    (["--no-such-flag"], [], "--no-such-flag"),
    ([], ["--config.name=a\nid"], "after --"),
    ([], ["--config.name=a\rb"], "after --"),
    ([], ["--config.name=a\x00b"], "after --"),
    ([], ["--workdir", "/tmp/w\nid"], "after --"),
]

K8S_HOSTILE = [
    (["--name", "run\nx"], [], "--name"),
    (["--name", "run\x00"], [], "--name"),
    (["--name", "Run"], [], "--name"),
    (["--name", "a_b"], [], "--name"),
    (["--name", "-a"], [], "--name"),
    (["--name", "x" * 64], [], "--name"),
    (["--port", "0"], [], "--port"),
    (["--port", "70000"], [], "--port"),
    (["--port", "-1"], [], "--port"),
    (["--port", "http"], [], "--port"),
    (["--nodes", "0"], [], "--nodes"),
    (["--gpus-per-node", "-1"], [], "--gpus-per-node"),
    (["--max-restarts", "-1"], [], "--max-restarts"),
    (["--image", "img:1\nx"], [], "--image"),
    (["--image", "img 1"], [], "--image"),
    (["--queue", "team\na"], [], "--queue"),
    (["--queue", "team a"], [], "--queue"),
    (["--namespace", "Team"], [], "--namespace"),
    (["--namespace", "ns\r"], [], "--namespace"),
    (["--pvc", "Claim"], [], "--pvc"),
    (["--pvc", "runs:relative/path"], [], "--pvc"),
    (["--pvc", "runs:/mnt/runs\nx"], [], "--pvc"),
    (["--cpu", "lots"], [], "--cpu"),
    (["--memory", "512Gi\n"], [], "--memory"),
    (["--env", "A=x\ny"], [], "--env"),
    (["--env", "1A=x"], [], "--env"),
    ([], ["--config.name=a\nb"], "after --"),
    ([], ["\x00"], "after --"),
]

PREFLIGHT_HOSTILE = [
    (["--prometheus-port", "70000"], "--prometheus-port"),
    (["--prometheus-port", "-1"], "--prometheus-port"),
    (["--prometheus-port", "http"], "--prometheus-port"),
    (["--prometheus-host", "127.0.0.1\nx", "--prometheus-port", "9"], "--prometheus-host"),
    (["--size", "0"], "--size"),
    (["--iters", "0"], "--iters"),
    (["--timeout", "0"], "--timeout"),
    (["--dtypes", "int8"], "--dtypes"),
    (["--dtypes", ""], "--dtypes"),
    (["--collective-mb", "lots"], "--collective-mb"),
    (["--collective-mb", "-1"], "--collective-mb"),
    (["--straggler-ratio", "0"], "--straggler-ratio"),
    (["--straggler-ratio", "1.5"], "--straggler-ratio"),
    (["--hold", "-1"], "--hold"),
    (["--mode", "per_rack"], "--mode"),
    (["--no-such-flag"], "--no-such-flag"),
]


def _ids(cases):
    return [repr(c[:-1])[:60] for c in cases]


@pytest.mark.parametrize("options, train, names", SLURM_HOSTILE, ids=_ids(SLURM_HOSTILE))
def test_slurm_refuses_hostile_values(options, train, names, capsys) -> None:
    rc, err = _main(launch_cli, ["slurm", *options, "--dry-run", "--", *W, *train], capsys)
    _assert_refused(rc, err, "scalekit launch slurm", names)
    assert "\n" not in err.strip() and "\r" not in err


@pytest.mark.parametrize("options, train, names", K8S_HOSTILE, ids=_ids(K8S_HOSTILE))
def test_k8s_refuses_hostile_values(options, train, names, capsys) -> None:
    rc, err = _main(launch_cli, ["k8s", *options, "--dry-run", "--", *W, *train], capsys)
    _assert_refused(rc, err, "scalekit launch k8s", names)


def test_unknown_launch_target_is_one_line(capsys) -> None:
    rc, err = _main(launch_cli, ["slrum", "--dry-run"], capsys)
    _assert_refused(rc, err, "scalekit launch", "slrum")


@pytest.mark.parametrize("argv, names", PREFLIGHT_HOSTILE, ids=_ids(PREFLIGHT_HOSTILE))
def test_preflight_refuses_hostile_values(argv, names, capsys) -> None:
    rc, err = _main(preflight_cli, argv, capsys)
    _assert_refused(rc, err, "scalekit preflight", names)


def test_the_real_cli_refuses_a_newline_in_the_name_without_a_traceback() -> None:
    res = subprocess.run([sys.executable, "-m", "scalekit", "launch", "slurm", "--name", "x\nid", "--time",
                          "1:00:00", "--dry-run", "--", *W], capture_output=True, text=True, cwd=REPO, timeout=120)
    _assert_refused(res.returncode, res.stderr, "scalekit launch slurm", "--name")
    assert res.stdout == "", "nothing is rendered"


def test_the_library_refuses_hostile_values_too() -> None:
    for job, flag in ((slurm.SlurmJob(job_name="a\nb"), "--name"), (slurm.SlurmJob(time="1\n"), "--time"),
                      (slurm.SlurmJob(partition="p\x00"), "--partition"), (slurm.SlurmJob(env={"A": "\r"}), "--env")):
        with pytest.raises(ValueError, match=flag):
            slurm.render_sbatch(job, W)
    with pytest.raises(ValueError, match="job array command"):
        slurm.render_array(slurm.SlurmJob(), [["python", "a\nb"]])
    with pytest.raises(ValueError, match="--port"):
        k8s.manifest(k8s.K8sJob(port=65536), W)


def _port_in_use(host: str = "127.0.0.1") -> socket.socket:
    s = socket.socket()
    s.bind((host, 0))
    s.listen()
    return s


def test_preflight_port_in_use_is_one_line_before_measuring(clean_env) -> None:
    with _port_in_use() as busy:
        port = busy.getsockname()[1]
        res = subprocess.run([sys.executable, "-m", "scalekit", "preflight", "--size", "64", "--iters", "1",
                              "--collective-mb", "0.01", "--dtypes", "float32", "--hold", "0",
                              "--prometheus-port", str(port)], capture_output=True, text=True, cwd=REPO,
                             env=clean_env(1), timeout=180)
    _assert_refused(res.returncode, res.stderr, "scalekit preflight", "--prometheus-port")
    assert str(port) in res.stderr and "preflight:" not in res.stdout, "it fails before the measurements"


def test_preflight_metrics_bind_loopback_by_default() -> None:
    assert preflight_cli._parser().parse_args([]).prometheus_host == "127.0.0.1"


# --- legitimate values survive, quoted ----------------------------------------------------------------------------

TRICKY = ["--config.note=it's a \"quoted\" run", "--config.path=/runs/a b/$HOME/`id`", "--x=$(id); echo pwned",
          "-", "*", "a\\b", "yes", "null", "#not-a-comment", "key: value", "ünïcødé"]


def test_sbatch_script_quotes_tricky_training_args(tmp_path: Path, capsys) -> None:
    workdir = tmp_path / "run"
    rc = launch_cli.main(["slurm", "--name", "llm-1.3b_v2", "--time", "1-12:30:00", "--partition", "gpu,debug",
                          "--account", "team-a", "--env", "NOTE=a 'b' \"c\" $d", "--preflight",
                          "--preflight-args", "--size '64'", "--dry-run", "--", "--workdir", str(workdir), *TRICKY])
    text = capsys.readouterr().out
    assert rc == 0, text
    script = tmp_path / "job.sbatch"
    script.write_text(text)
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    lines = text.splitlines()
    sbatch = [i for i, line in enumerate(lines) if line.startswith("#SBATCH")]
    assert sbatch == list(range(sbatch[0], sbatch[-1] + 1)), "the #SBATCH lines are one block"
    assert all(line.startswith("#") for line in lines[:sbatch[0]]), "only comments before it (sbatch stops there)"
    for want in ("--job-name=llm-1.3b_v2", "--time=1-12:30:00", "--partition=gpu,debug", "--account=team-a"):
        assert f"#SBATCH {want}" in lines
    # bash reads the command array and the exported value back exactly
    cmd = next(line for line in lines if line.startswith("CMD=("))
    env = next(line for line in lines if line.startswith("export NOTE="))
    out = subprocess.run(["bash", "-c", f'{cmd}\n{env}\nprintf "%s\\0" "${{CMD[@]}}" "$NOTE"'], capture_output=True,
                         check=True).stdout.decode().split("\0")[:-1]
    assert out[:-1] == slurm.train_argv(slurm.SlurmJob(), ["--workdir", str(workdir), *TRICKY])
    assert out[-1] == "a 'b' \"c\" $d"


def test_k8s_manifest_round_trips_tricky_values(capsys) -> None:
    rc = launch_cli.main(["k8s", "--name", "llm-run", "--queue", "team-a.q_1", "--namespace", "ml",
                          "--env", "NOTE=a: 'b' \"c\" # d", "--env", "FLAG=yes", "--env", "EMPTY=",
                          "--pvc", "runs:/mnt/my runs", "--preflight", "--dry-run", "--", *W, *TRICKY])
    text = capsys.readouterr().out
    assert rc == 0, text
    doc = yaml.safe_load(text)
    (c,) = doc["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["containers"]
    assert c["command"][:2] == ["bash", "-c"]
    # the preflight wrapper is one bash -c string: bash must split it back into the same training argv
    script = c["command"][2].replace("exec ", "printf '%s\\0' ", 1).split("|| echo 'scalekit: preflight failed'; ")[1]
    argv = subprocess.run(["bash", "-c", script], capture_output=True, check=True).stdout.decode().split("\0")[:-1]
    assert argv == ["python", "-m", "scalekit", "train", *W, *TRICKY, "--config.distributed.mode=per_node"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["NOTE"] == "a: 'b' \"c\" # d" and env["FLAG"] == "yes" and env["EMPTY"] == ""
    assert doc["metadata"] == {"name": "llm-run", "namespace": "ml", "labels": {
        "app.kubernetes.io/name": "scalekit", "app.kubernetes.io/component": "train",
        "kueue.x-k8s.io/queue-name": "team-a.q_1"}}
    assert {"name": "workdir", "mountPath": "/mnt/my runs"} in c["volumeMounts"]
    plain = k8s.manifest(k8s.K8sJob(name="llm-run"), [*W, *TRICKY])
    assert yaml.safe_load(yaml.safe_dump(plain)) == plain
    assert plain["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["containers"][0][
        "command"][4:-1] == [*W, *TRICKY]


@pytest.mark.parametrize("value", ["5", "30:00", "04:00:00", "100:00:00", "2-0", "1-12:30", "7-00:00:00",
                                   "UNLIMITED"])
def test_every_slurm_time_format_is_accepted(value: str) -> None:
    assert f"#SBATCH --time={value}\n" in slurm.render_sbatch(slurm.SlurmJob(time=value), W)


# --- listeners bind loopback unless told ---------------------------------------------------------------------------

@pytest.fixture
def bound(monkeypatch):
    """The (address, port) of every server socket the rendezvous creates; its global state is reset after."""
    addresses: list[tuple] = []
    real = socket.create_server

    def spy(address, *args, **kwargs):
        srv = real(address, *args, **kwargs)
        addresses.append(srv.getsockname()[:2])
        return srv

    monkeypatch.setattr(rendezvous.socket, "create_server", spy)
    monkeypatch.setattr(rendezvous, "_STATE", None)
    monkeypatch.setattr(rendezvous, "_install_hooks", lambda: None)  # no atexit/excepthook in the test process
    return addresses


def _no_resolve(host: str, deadline: float) -> str:
    raise AssertionError(f"process 0 should not resolve {host!r} here")


def test_rendezvous_binds_loopback_for_a_loopback_coordinator(bound, free_port) -> None:
    address, bind = rendezvous.meet("127.0.0.1", free_port, 0, 1, 5, resolve=_no_resolve)
    assert bound == [("127.0.0.1", free_port)] and address == bind == f"127.0.0.1:{free_port}"


def test_rendezvous_binds_loopback_when_every_process_is_local(bound, free_port) -> None:
    address, _ = rendezvous.meet("gpu001", free_port, 0, 1, 5, resolve=_no_resolve, local=True)
    assert bound == [("127.0.0.1", free_port)] and address == f"127.0.0.1:{free_port}"


def test_rendezvous_binds_the_coordinator_hosts_own_address(bound, free_port) -> None:
    # 127.0.0.2 is an address of this machine (all of 127/8 is on lo) that is not 127.0.0.1: binding it, rather
    # than every interface, is what binding "the host part of the coordinator address" means.
    address, bind = rendezvous.meet("coord-host", free_port, 0, 1, 5, resolve=lambda h, d: "127.0.0.2")
    assert bound == [("127.0.0.2", free_port)] and address == bind == f"127.0.0.2:{free_port}"


def test_rendezvous_on_a_host_that_is_not_this_machine_says_so(bound, free_port) -> None:
    with pytest.raises(distributed.DistributedInitError, match="not an address of this machine"):
        rendezvous.meet("elsewhere", free_port, 0, 1, 5, resolve=lambda h, d: "192.0.2.1")  # TEST-NET-1


def test_rendezvous_binds_every_interface_only_when_told(bound, free_port) -> None:
    address, bind = rendezvous.meet("127.0.0.1", free_port, 0, 1, 5, resolve=_no_resolve, bind="0.0.0.0")
    assert bound == [("0.0.0.0", free_port)] and bind == f"0.0.0.0:{free_port}" and address.startswith("127.")


def test_rendezvous_port_in_use_is_named(bound) -> None:
    with _port_in_use() as busy:
        port = busy.getsockname()[1]
        with pytest.raises(distributed.DistributedInitError, match=f"port {port}"):
            rendezvous.meet("127.0.0.1", port, 0, 1, 5, resolve=_no_resolve)


def test_who_counts_as_local_and_the_bind_override() -> None:
    one_node = {"SLURM_JOB_ID": "7", "SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "2", "SLURM_STEP_NODELIST": "gpu1",
                "SLURM_STEP_NUM_NODES": "1"}
    two_nodes = dict(one_node, SLURM_STEP_NODELIST="gpu[1-2]", SLURM_STEP_NUM_NODES="2")
    assert distributed.all_local(distributed.detect({}, one_node), one_node)
    assert not distributed.all_local(distributed.detect({}, two_nodes), two_nodes)
    spec = distributed.detect({"coordinator_address": "localhost:1234", "num_processes": 2, "process_id": 0}, {})
    assert distributed.all_local(spec, {})
    assert distributed.bind_override({}) is None
    assert distributed.bind_override({"SCALEKIT_COORDINATOR_BIND": "0.0.0.0"}) == "0.0.0.0"
    assert distributed.bind_override({"JAX_COORDINATOR_BIND_ADDRESS": "[::1]:9"}) == "::1"
    with pytest.raises(distributed.DistributedInitError, match="SCALEKIT_COORDINATOR_BIND"):
        distributed.bind_override({"SCALEKIT_COORDINATOR_BIND": "eth0; id"})


def test_prometheus_exporter_binds_loopback_by_default() -> None:
    from scalekit.observe.prometheus import PrometheusExporter
    exporter = PrometheusExporter({"run": "r", "process_index": 0, "host": "h"}, port=0, devices=[])
    try:
        assert exporter._server.server_address[0] == "127.0.0.1" and exporter.address.startswith("127.0.0.1:")
    finally:
        exporter.close()


def test_rendezvous_binds_the_loopback_literal_it_is_given(bound, free_port) -> None:
    address, _ = rendezvous.meet("127.0.0.3", free_port, 0, 1, 5, resolve=_no_resolve)
    assert bound == [("127.0.0.3", free_port)] and address == f"127.0.0.3:{free_port}"
