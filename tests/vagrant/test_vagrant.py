"""The Vagrant lab (vagrant/) is the namespace lab on VMs, checked without booting one.

(a) `vagrant validate` accepts the Vagrantfile with no box and no provider installed, and
refuses a bad FTP_ALG_GATEWAY; (b) the Ruby flattening (vagrant/lab_env.rb) gives every node
exactly the environment alg/lab/topology.py gives it, and the wrapper each VM runs passes
that environment, through the shell, to the script; (c) the scripts the VMs run are the
namespace backend's own files, synced into the VM. The Vagrantfile is read through Vagrant's
own loader, so what is checked is what `vagrant up` would see.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from alg.lab import backend, state
from alg.lab.topology import DEFAULT_PATH, Topology, load

REPO = Path(__file__).resolve().parents[2]
VAGRANT_DIR = REPO / "vagrant"
LAB_ENV_RB = VAGRANT_DIR / "lab_env.rb"
GUEST_REPO = "/opt/ftp-alg"
VALIDATED = "Vagrantfile validated successfully."

# Every machine's config as Vagrant itself builds it from the Vagrantfile (no provider needed).
DUMP_RB = """
require "json"
require "vagrant"
env = Vagrant::Environment.new(cwd: ARGV[0])
out = env.machine_names.to_h do |name|
  cfg = env.vagrantfile.machine_config(name, :libvirt, env.boxes, nil, false)[:config]
  [name, {
    box: cfg.vm.box,
    networks: cfg.vm.networks.select { |type, _| type == :private_network }.map(&:last),
    synced_folders: cfg.vm.synced_folders,
    provisioners: cfg.vm.provisioners.map do |p|
      { name: p.name, type: p.type, run: p.run, inline: p.config.inline }
    end,
  }]
end
puts JSON.generate(out)
"""

# LabEnv.env_for for every node of the topology file ARGV[1].
ENV_FOR_RB = """
require "json"
require ARGV[0]
topo = LabEnv.load(ARGV[1])
puts JSON.generate(topo["nodes"].keys.to_h { |n| [n, LabEnv.env_for(topo, n)] })
"""


def _need(tool: str) -> str:
    found = shutil.which(tool)
    if found is None:
        pytest.skip(f"{tool} is not installed (.ci/install installs vagrant, which brings ruby)")
    return found


@pytest.fixture(scope="module")
def vagrant_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Vagrant run on vagrant/, with its home and machine data in a temporary directory (no
    vagrant/.vagrant left in the tree)."""
    _need("vagrant")
    _need("ruby")
    tmp = tmp_path_factory.mktemp("vagrant")
    env = {
        **os.environ,
        "VAGRANT_CWD": str(VAGRANT_DIR),
        "VAGRANT_HOME": str(tmp / "home"),
        "VAGRANT_DOTFILE_PATH": str(tmp / "dotfile"),
        "VAGRANT_CHECKPOINT_DISABLE": "1",
    }
    env.pop("FTP_ALG_GATEWAY", None)
    env.pop("VAGRANT_DEFAULT_PROVIDER", None)
    return env


def _run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)


def _dump(env: dict[str, str], gateway: str | None = None) -> dict[str, Any]:
    if gateway is not None:
        env = {**env, "FTP_ALG_GATEWAY": gateway}
    done = _run(["ruby", "-e", DUMP_RB, str(VAGRANT_DIR)], env)
    assert done.returncode == 0, done.stderr
    dumped: dict[str, Any] = json.loads(done.stdout)
    return dumped


@pytest.fixture(scope="module")
def machines(vagrant_env: dict[str, str]) -> dict[str, Any]:
    return _dump(vagrant_env)


@pytest.fixture(scope="module")
def topo() -> Topology:
    return load()


# --- (a) vagrant validate -------------------------------------------------------------------


def test_vagrant_validate_needs_no_box_and_no_provider(vagrant_env: dict[str, str]) -> None:
    # --ignore-provider: CI has vagrant but neither VirtualBox nor the libvirt plugin, and a
    # plain `validate` then stops at "No usable default provider could be found".
    done = _run(["vagrant", "validate", "--ignore-provider"], vagrant_env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert VALIDATED in done.stdout


def test_vagrant_validate_checks_the_libvirt_block(vagrant_env: dict[str, str]) -> None:
    plugins = _run(["vagrant", "plugin", "list"], vagrant_env)
    if "vagrant-libvirt" not in plugins.stdout:
        pytest.skip("the vagrant-libvirt plugin is not installed: only --ignore-provider runs")
    done = _run(["vagrant", "validate"], {**vagrant_env, "VAGRANT_DEFAULT_PROVIDER": "libvirt"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert VALIDATED in done.stdout


def test_an_unknown_gateway_mode_is_refused(vagrant_env: dict[str, str]) -> None:
    done = _run(
        ["vagrant", "validate", "--ignore-provider"], {**vagrant_env, "FTP_ALG_GATEWAY": "bogus"}
    )
    assert done.returncode != 0
    assert "FTP_ALG_GATEWAY=bogus" in done.stderr
    assert VALIDATED not in done.stdout


# --- (b) the environment --------------------------------------------------------------------


def _synthetic_topology(path: Path) -> Path:
    """The real topology plus what it does not exercise: a node and a network with digits and
    underscores, an IPv6 prefix written the long way in upper case, false, null, strings with
    spaces and mixed lists."""
    raw = json.loads(DEFAULT_PATH.read_text())
    raw["networks"]["wan"]["ipv6"] = "FD00:198:51:100:0:0:0:0/64"
    raw["networks"]["dmz_2"] = {"ipv4": "10.1.0.0/16", "ipv6": "fd00:0:0:2::/64"}
    raw["nodes"]["router"]["interfaces"]["dmz_2"] = {"ipv4": "10.1.0.1", "ipv6": "fd00:0:0:2::1"}
    raw["nodes"]["inside_2"] = {
        "role": "ftp-server",
        "route_via": "router",
        "interfaces": {"dmz_2": {"ipv4": "10.1.2.3", "ipv6": "fd00:0:0:2:0:0:0:23"}},
    }
    raw["nat"]["masquerade"] = False
    raw["nat"]["comment"] = None
    raw["ftp"]["banner"] = "two words"
    raw["ftp"]["mixed"] = [1, True, "x", None]
    path.write_text(json.dumps(raw))
    return path


@pytest.mark.parametrize("which", ["topology.json", "synthetic"])
def test_lab_env_rb_flattens_like_topology_py(which: str, tmp_path: Path) -> None:
    _need("ruby")
    path = DEFAULT_PATH if which == "topology.json" else _synthetic_topology(tmp_path / "t.json")
    topo = load(path)
    done = _run(["ruby", "-e", ENV_FOR_RB, str(LAB_ENV_RB), str(path)], dict(os.environ))
    assert done.returncode == 0, done.stderr
    ruby = json.loads(done.stdout)
    assert list(ruby) == list(topo.nodes)
    for node in topo.nodes:
        assert ruby[node] == topo.env_for(node), node


def _wrapper(inline: str) -> str:
    """The /usr/local/sbin/lab-provision a VM's "lab" provisioner writes."""
    found = re.search(r"<<'LAB_PROVISION'\n(.*?\n)LAB_PROVISION\n", inline, re.S)
    assert found, inline
    return found.group(1)


def _run_wrapper(wrapper: str, tmp: Path, *args: str) -> tuple[dict[str, str], str, list[str]]:
    """Run the wrapper through sh with a fake `env` that prints what it was given: the
    variables (after the shell's own unquoting), the script and its arguments."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "env"
    fake.write_text("#!/bin/sh\nfor a; do printf '%s\\0' \"$a\"; done\n")
    fake.chmod(0o755)
    script = tmp / "lab-provision"
    script.write_text(wrapper)
    done = subprocess.run(
        ["sh", str(script), *args],
        env={"PATH": f"{bin_dir}:/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    argv = done.stdout.split("\0")[:-1]
    assert argv[0] == "-i", argv  # nothing of the provisioner's own environment leaks in
    cut = argv.index("bash")
    variables = dict(a.split("=", 1) for a in argv[1:cut])
    assert len(variables) == cut - 1, "a variable is set twice"
    return variables, argv[cut + 1], argv[cut + 2 :]


def _vm_extras(topo: Topology, node: str, gateway: str) -> dict[str, str]:
    """provision/README.md's VM column, computed here independently of the Ruby side."""
    others = [n for name, n in topo.networks.items() if name not in topo.nodes[node].interfaces]
    return {
        "LAB_STATE_DIR": "/run/ftp-alg-lab/vm",
        "LAB_GATEWAY_MODE": gateway,
        "LAB_PYTHON": f"{GUEST_REPO}/.venv/bin/python",
        "LAB_FTP_ALG": f"{GUEST_REPO}/.venv/bin/ftp-alg",
        "LAB_ROUTE_PREFIXES": " ".join(f"{n.ipv4} {n.ipv6}" for n in others),
    }


def test_each_vm_runs_its_script_with_the_namespace_environment(
    machines: dict[str, Any], topo: Topology, tmp_path: Path
) -> None:
    record = state.LabRecord("t", str(DEFAULT_PATH), {})
    for node in topo.nodes:
        lab = next(p for p in machines[node]["provisioners"] if p["name"] == "lab")
        variables, _, args = _run_wrapper(_wrapper(lab["inline"]), tmp_path, "gateway", "kernel")
        assert args == ["gateway", "kernel"]
        path = variables.pop("PATH")
        assert path.startswith(f"{GUEST_REPO}/.venv/bin:"), path
        assert variables == {**topo.env_for(node), **_vm_extras(topo, node, "none")}, node
        # every variable the namespace backend sets is set on the VM too
        assert set(backend.script_env(record, topo, node)) <= {"PATH", *variables}
        # the wrapper is what the provisioner runs, with no arguments: `SCRIPT up`
        assert lab["inline"].rstrip().endswith("\n/usr/local/sbin/lab-provision up")
        assert lab["run"] == "always"


@pytest.mark.parametrize("gateway", ["kernel", "ftp-alg"])
def test_ftp_alg_gateway_selects_the_routers_mode(
    vagrant_env: dict[str, str], topo: Topology, gateway: str, tmp_path: Path
) -> None:
    machines = _dump(vagrant_env, gateway)
    lab = next(p for p in machines[topo.router]["provisioners"] if p["name"] == "lab")
    variables, _, args = _run_wrapper(_wrapper(lab["inline"]), tmp_path)
    assert args == []
    assert variables["LAB_GATEWAY_MODE"] == gateway  # router.sh: `up` with no MODE uses it


def test_machines_and_links_follow_the_topology(machines: dict[str, Any], topo: Topology) -> None:
    assert sorted(machines) == sorted(topo.nodes)
    assert next(iter(machines)) == topo.router  # up first, like the namespace backend
    links: dict[str, set[tuple[str, str]]] = {}  # private network -> {(node, topology net)}
    for node, machine in machines.items():
        assert machine["box"] == "debian/bookworm64"
        interfaces = topo.nodes[node].interfaces
        nets = machine["networks"]
        assert sorted(n["ip"] for n in nets) == sorted(a.ipv4 for a in interfaces.values())
        for net in nets:
            name = next(k for k, a in interfaces.items() if a.ipv4 == net["ip"])
            assert net["netmask"] == str(topo.networks[name].ipv4.netmask)
            assert net["virtualbox__intnet"] == net["libvirt__network_name"]
            assert net["libvirt__forward_mode"] == "veryisolated"  # no host address on it
            assert net["libvirt__dhcp_enabled"] is False
            links.setdefault(net["virtualbox__intnet"], set()).add((node, name))
        inline = next(p for p in machine["provisioners"] if p["name"] == "lab")["inline"]
        for name, addr in interfaces.items():  # the IPv6 address, on the IPv4 one's interface
            length = topo.networks[name].ipv6.prefixlen
            line = f'ip -6 addr replace {addr.ipv6}/{length} dev "$(dev_of {addr.ipv4})" nodad'
            assert line in inline.splitlines(), (node, line)
        throws = re.findall(r"^ip route replace throw (\S+)$", inline, re.M)
        others = [
            str(p)
            for name, n in topo.networks.items()
            if name not in interfaces
            for p in (n.ipv4, n.ipv6)
        ]
        assert throws == ([] if topo.nodes[node].route_via else others), node
    # one private network per topology network, joining exactly its two nodes
    expected = {frozenset((m, net) for m in topo.members(net)) for net in topo.networks}
    assert {frozenset(v) for v in links.values()} == expected
    assert len(links) == len(topo.networks)


# --- (c) the scripts ------------------------------------------------------------------------


def _synced_repo(machine: dict[str, Any]) -> dict[str, Any]:
    folders = [f for f in machine["synced_folders"].values() if not f.get("disabled")]
    assert len(folders) == 1, folders
    return dict(folders[0])


def _excluded(rel: Path, patterns: list[str]) -> bool:
    """Would an rsync exclude pattern (unanchored, a trailing / for directories) drop rel?"""
    parts = rel.parts
    for pattern in patterns:
        name = pattern.rstrip("/")
        dirs_only = pattern.endswith("/")
        for i, part in enumerate(parts):
            if fnmatch.fnmatch(part, name) and (not dirs_only or i < len(parts) - 1):
                return True
    return False


def test_vms_run_the_namespace_backends_scripts(
    machines: dict[str, Any], topo: Topology, tmp_path: Path
) -> None:
    for node, machine in machines.items():
        folder = _synced_repo(machine)
        assert Path(folder["hostpath"]).resolve() == REPO
        assert folder["guestpath"] == GUEST_REPO and folder["type"] == "rsync"
        excludes = list(folder.get("rsync__exclude", []))

        lab = next(p for p in machine["provisioners"] if p["name"] == "lab")
        _, script, _ = _run_wrapper(_wrapper(lab["inline"]), tmp_path)
        expected = backend.PROVISION_DIR / backend.SCRIPTS[topo.nodes[node].role]
        assert expected.is_file()
        assert script == f"{GUEST_REPO}/{expected.relative_to(REPO)}", node
        # what the scripts pull in beside them reaches the VM too
        for used in sorted(backend.PROVISION_DIR.iterdir()):
            assert not _excluded(used.relative_to(REPO), excludes), used

        install = next(p for p in machine["provisioners"] if p["name"] == "install")
        assert install["inline"] == f"bash {GUEST_REPO}/.ci/install"
        assert install["run"] is None  # once, at the first `vagrant up`
        assert (REPO / ".ci" / "install").is_file()
        assert not _excluded(Path(".ci/install"), excludes)


def test_rsync_excludes_keep_host_state_out(machines: dict[str, Any]) -> None:
    excludes = list(_synced_repo(next(iter(machines.values()))).get("rsync__exclude", []))
    for rel in (".venv/bin/python", ".git/HEAD", "ftp_alg.egg-info/PKG-INFO"):
        assert _excluded(Path(rel), excludes), rel
