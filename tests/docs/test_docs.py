"""The documents in docs/ stay true to the code.

Each test reads what a document claims and checks it against the code that decides it, so a
new option, subcommand, refusal reason, counter or rule layout fails here until it is
documented, and a document that names something the code no longer has fails too.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import inspect
import io
import pkgutil
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import fields
from pathlib import Path
from types import ModuleType

import pytest

from alg.cli import build_parser
from alg.core.reports import EventKind, Reason
from alg.daemon.settings import CORE_OPTIONS, Settings, load
from alg.kernel import rules
from alg.options import parse_ports

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
MARKDOWN = sorted(DOCS.glob("*.md"))
TOML = DOCS / "ftp-alg.toml"
UNIT = DOCS / "ftp-alg.service"
INSTALLED = "/opt/ftp-alg/bin/ftp-alg"  # where deployment.md installs the command


def _text(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def _option_names() -> tuple[set[str], set[str]]:
    core = set(CORE_OPTIONS)
    daemon = {f.name for f in fields(Settings)} - {"core"}
    return core, daemon


# ---- the configuration file ------------------------------------------------------------------


def test_config_file_names_every_option_at_its_default() -> None:
    data = tomllib.loads(TOML.read_text(encoding="utf-8"))
    core, daemon = _option_names()
    assert set(data) == {"gateway", "daemon"}, "options belong in [gateway] and [daemon]"
    assert set(data["gateway"]) <= core, "[gateway] holds the core's options (Config)"
    assert set(data["daemon"]) <= daemon, "[daemon] holds the daemon's options (Settings)"
    documented = set(data["gateway"]) | set(data["daemon"])
    missing = (core | daemon) - documented
    assert not missing, f"options missing from docs/ftp-alg.toml: {sorted(missing)}"
    assert load(str(TOML), {}) == Settings(), "docs/ftp-alg.toml must show the defaults"


def test_every_option_in_the_config_file_has_a_comment() -> None:
    lines = TOML.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if not re.match(r"[a-z_]+\s*=", line):
            continue
        j = i - 1
        while j >= 0 and re.match(r"[a-z_]+\s*=", lines[j]):  # options sharing a comment
            j -= 1
        assert j >= 0 and lines[j].startswith("#"), f"no comment above {line!r}"


def test_announce_examples_load() -> None:
    """Every `announce = {...}` shown in the docs is valid for the loader."""
    examples = []
    for path in [TOML, *MARKDOWN]:
        examples += re.findall(r"announce = (\{[^}\n]+\})", path.read_text(encoding="utf-8"))
    examples = [e for e in examples if e != "{}"]
    assert examples, "the double-NAT example of `announce` is gone"
    for example in examples:
        value = tomllib.loads(f"announce = {example}")["announce"]
        settings = load(None, {"announce": value})
        assert settings.core.announce, example
        assert all(len(k) in (4, 16) for k in settings.core.announce), example


def _deployment_option_rows() -> dict[str, tuple[str, str]]:
    """deployment.md's option table: name -> (run flag, default as TOML text)."""
    rows: dict[str, tuple[str, str]] = {}
    for line in _text("deployment.md").splitlines():
        m = re.fullmatch(r"\| `([a-z_]+)` \|\s*([^|]*?)\s*\| `([^`]+)` \|", line.strip())
        if m:
            rows[m.group(1)] = (m.group(2).strip(), m.group(3))
    return rows


def test_deployment_table_lists_every_option_with_its_default_and_flag() -> None:
    rows = _deployment_option_rows()
    core, daemon = _option_names()
    assert set(rows) == core | daemon, "deployment.md's option table must list every option"
    data = tomllib.loads(TOML.read_text(encoding="utf-8"))
    flat = {**data["gateway"], **data["daemon"]}
    run = _subparsers(build_parser())["run"]
    flags = {opt: action.dest for action in run._actions for opt in action.option_strings}
    for name, (flag, default) in rows.items():
        assert tomllib.loads(f"v = {default}")["v"] == flat[name], f"default of {name}"
        if flag:
            option = flag.strip("`").split()[0]
            assert flags.get(option) == name, f"`ftp-alg run {option}` does not set {name}"


# ---- commands --------------------------------------------------------------------------------


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _code_lines(text: str) -> list[str]:
    """Lines of fenced blocks and of 4-space indented blocks (not list continuations)."""
    out: list[str] = []
    fenced = False
    previous_blank = True
    in_indented = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            out.append(line)
        elif line.startswith("    ") and (previous_blank or in_indented):
            in_indented = True
            out.append(line.strip())
        elif line.strip():
            in_indented = False
        previous_blank = not line.strip()
    return out


def _shown_commands() -> list[tuple[str, list[str]]]:
    """(where, argv after `ftp-alg`) for every complete command line the docs show."""
    found: list[tuple[str, list[str]]] = []
    sources = [(p.name, _code_lines(p.read_text(encoding="utf-8"))) for p in MARKDOWN]
    for where, lines in sources:
        for line in lines:
            try:
                words = shlex.split(line, comments=True)
            except ValueError:
                continue
            if words and (words[0] == "ftp-alg" or words[0].endswith("/ftp-alg")):
                found.append((f"{where}: {line.strip()}", words[1:]))
    for key, value in _unit_entries():
        if key.startswith("Exec"):
            words = shlex.split(value.lstrip("+-@:!"))
            if words[0].endswith("/ftp-alg"):
                found.append((f"ftp-alg.service: {key}={value}", words[1:]))
    return found


def test_every_command_line_shown_parses() -> None:
    shown = _shown_commands()
    assert len(shown) > 10, "the command lines of the docs were not found"
    for where, argv in shown:
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # `--help` prints
                args = build_parser().parse_args(argv)
        except SystemExit as exc:
            if exc.code == 0 and "--help" in argv:
                continue  # `ftp-alg ... --help` printed its help: the words before it parsed
            pytest.fail(f"not a valid ftp-alg command line: {where}")
        assert callable(args.func), where


def _printed_by_the_code(span: str) -> bool:
    """A message the program prints (`ftp-alg rules are not installed`), not a command."""
    head = span.split("...")[0].strip()
    sources = (p.read_text(encoding="utf-8") for p in (ROOT / "alg").rglob("*.py"))
    return any(f'"{head}' in source for source in sources)


def _inline_commands() -> list[tuple[str, list[str]]]:
    found = []
    for path in [*MARKDOWN, TOML]:
        for span in re.findall(r"`([^`\n]+)`", path.read_text(encoding="utf-8")):
            words = span.split()
            command = words[:1] in (["ftp-alg"], [INSTALLED]) and len(words) > 1
            if command and not _printed_by_the_code(span):
                found.append((f"{path.name}: `{span}`", words[1:]))
    return found


def test_every_subcommand_and_option_mentioned_exists() -> None:
    """Inline mentions such as `ftp-alg rules apply|remove` or `ftp-alg run --allow-fxp`."""
    mentioned = _inline_commands()
    assert len(mentioned) > 10
    top = _subparsers(build_parser())
    for where, words in mentioned:
        if words[0].isupper():
            continue  # a placeholder: `ftp-alg COMMAND --help`
        if words[0].endswith(":"):  # a message the command prints: `ftp-alg run: ...`
            assert words[0][:-1] in top, f"no subcommand {words[0][:-1]!r}: {where}"
            continue
        parser: argparse.ArgumentParser | None = None
        for name in words[0].split("|"):
            assert name in top, f"no subcommand {name!r}: {where}"
            parser = top[name]
        assert parser is not None
        rest = words[1:]
        actions = _subparsers(parser)
        if actions and rest and not rest[0].startswith("-") and rest[0].islower():
            for name in rest[0].strip("[]").split("|"):
                assert name in actions, f"no action {name!r}: {where}"
            parser = actions[rest[0].split("|")[0]]
            rest = rest[1:]
        options = {opt for action in parser._actions for opt in action.option_strings}
        for word in rest:
            option = word.strip("[]").split("=")[0]
            if option.startswith("--"):
                assert option in options, f"no option {option}: {where}"


def test_the_index_names_every_subcommand() -> None:
    index = _text("README.md")
    for name in _subparsers(build_parser()):
        assert f"`ftp-alg {name}" in index, f"docs/README.md does not mention ftp-alg {name}"


# ---- refusal reasons, events and counters ----------------------------------------------------


def _calls(path: Path) -> list[ast.Call]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call)]


def _constant(node: ast.AST) -> set[str]:
    """The string if `node` is a plain string constant (f-strings are not names)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    return set()


def _strings(node: ast.AST) -> set[str]:
    return {
        sub.value
        for sub in ast.walk(node)
        if isinstance(sub, ast.Constant) and isinstance(sub.value, str)
    }


def _callee(call: ast.Call) -> str:
    func = call.func
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return ""


def refusal_reasons() -> set[str]:
    """The reasons the core refuses with: the `Reason` enum, the one place they are named."""
    return {str(r) for r in Reason}


def _backticked(text: str) -> set[str]:
    return set(re.findall(r"`([^`\n]+)`", text))


def test_every_refusal_reason_is_documented_in_security_md() -> None:
    reasons = refusal_reasons()
    assert {"bounce", "low-port", "unsolicited"} <= reasons, "reason extraction broke"
    security = _text("security.md")
    missing = reasons - _backticked(security)
    assert not missing, f"refusal reasons missing from docs/security.md: {sorted(missing)}"
    table = set(re.findall(r"^\| `([a-z-]+)` \|", security, re.MULTILINE))
    assert table == reasons, "security.md's reason table must list exactly the code's reasons"


def _package_files() -> list[Path]:
    return sorted((ROOT / "alg/core").glob("*.py")) + sorted((ROOT / "alg/daemon").glob("*.py"))


def _tallied(path: Path) -> set[str]:
    """Names counted as `....counters["name"] += n` (the daemon's one tally)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Subscript):
            owner = node.target.value
            if isinstance(owner, ast.Attribute) and owner.attr == "counters":
                names |= _constant(node.target.slice)
    return names


def counters_and_events() -> set[str]:
    """Every constant counter name and event kind the core and the daemon produce."""
    names: set[str] = set()
    for path in _package_files():
        for call in _calls(path):
            callee = _callee(call)
            if callee == "count" and call.args:
                names |= _constant(call.args[0])
        names |= _tallied(path)
    return names | {str(k) for k in EventKind}


def _counter_table() -> set[str]:
    names: set[str] = set()
    for line in _text("troubleshooting.md").splitlines():
        if line.startswith("| `"):
            names |= set(re.findall(r"`([^`]+)`", line.split("|")[1]))
    return names


def test_every_counter_and_event_is_documented() -> None:
    produced = counters_and_events()
    assert {"packets", "rewrite", "refusal", "blind", "expectation-created"} <= produced
    table = _counter_table()
    per_reason = {f"refusal.{r}" for r in Reason}  # `refusal.REASON` covers them
    assert "refusal.REASON" in table
    missing = produced - table
    assert not missing, f"counters/events missing from troubleshooting.md: {sorted(missing)}"
    stale = {n for n in table - produced - per_reason if not n.endswith(".REASON")}
    assert not stale, f"troubleshooting.md documents counters the code lacks: {sorted(stale)}"


# ---- the rules and the diagram ---------------------------------------------------------------


def _rules_block() -> list[str]:
    text = _text("architecture.md")
    m = re.search(r"```\n(# iptables -t raw\n.*?)```", text, re.DOTALL)
    assert m, "architecture.md lost its `ftp-alg rules show` listing"
    return m.group(1).splitlines()


def _script_rules() -> set[tuple[str, str]]:
    """(table, `-A CHAIN ARGS` or `-A HOOK -j CHAIN`) for IPv4, as `iptables -S` lists them."""
    script = rules.render_iptables_script(rules.RuleOptions())
    found: set[tuple[str, str]] = set()
    for m in re.finditer(r"^\s*iptables -w -t (\S+) -A (.+)$", script, re.MULTILINE):
        found.add((m.group(1), f"-A {m.group(2)}"))
    for m in re.finditer(r"iptables -w -t (\S+) -I (\S+) 1 -j (\S+)$", script, re.MULTILINE):
        found.add((m.group(1), f"-A {m.group(2)} -j {m.group(3)}"))
    return found


def test_architecture_quotes_the_rules_apply_installs() -> None:
    quoted: set[tuple[str, str]] = set()
    table = ""
    for line in _rules_block():
        if line.startswith("# iptables -t "):
            table = line.split()[-1]
        elif line.startswith("-A "):
            quoted.add((table, line))
    rendered = _script_rules()
    assert rendered, "could not read the rendered rules"
    assert quoted == rendered, (
        f"architecture.md quotes rules that are not installed: {sorted(quoted - rendered)}; "
        f"installed but not quoted: {sorted(rendered - quoted)}"
    )


def test_diagram_shows_where_packets_are_queued() -> None:
    dot = _text("architecture.dot")
    script = rules.render_iptables_script(rules.RuleOptions())
    queueing = set(re.findall(r"iptables -w -t (\S+) -A (\S+) .*-j NFQUEUE", script))
    assert queueing
    for table, chain in queueing:
        hooks = re.findall(rf"iptables -w -t {table} -I (\S+) 1 -j {chain}$", script, re.M)
        for hook in hooks:
            assert f"{table} {hook}" in dot, f"the diagram lacks the queue in {table} {hook}"


def test_diagram_is_rendered_and_renders() -> None:
    png = DOCS / "architecture.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "(architecture.png)" in _text("architecture.md")
    dot = shutil.which("dot")
    if dot is None:
        pytest.skip("graphviz is not installed")
    done = subprocess.run(
        [dot, "-Tcanon", str(DOCS / "architecture.dot")], capture_output=True, text=True
    )
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr


def _alg_modules() -> dict[str, ModuleType]:
    modules: dict[str, ModuleType] = {}
    for package in ("alg.core", "alg.daemon", "alg.kernel"):
        pkg = importlib.import_module(package)
        for info in pkgutil.iter_modules(pkg.__path__):
            modules[info.name] = importlib.import_module(f"{package}.{info.name}")
    return modules


def test_code_named_in_the_architecture_exists() -> None:
    modules = _alg_modules()
    classes: dict[str, list[type]] = {}
    for module in modules.values():
        for name, obj in inspect.getmembers(module, inspect.isclass):
            classes.setdefault(name, []).append(obj)
    text = _text("architecture.md") + _text("architecture.dot")
    checked = 0
    for owner, attr in set(re.findall(r"\b([A-Za-z_]\w*)\.([a-z_]\w*)\(", text)):
        if owner in classes:
            assert any(hasattr(c, attr) for c in classes[owner]), f"{owner}.{attr}() not found"
        elif owner in modules:
            assert hasattr(modules[owner], attr), f"{owner}.{attr}() not found"
        else:
            continue
        checked += 1
    assert checked > 20, "the code references of architecture.md were not found"
    for path in set(re.findall(r"(?<![\w/])((?:core|daemon|kernel|replay|lab)/\w+\.py)", text)):
        assert (ROOT / "alg" / path).is_file(), f"alg/{path} does not exist"
    for path in set(re.findall(r"(?<![\w/])(tests/[\w/]+\.py)", text)):
        assert (ROOT / path).is_file(), f"{path} does not exist"


# ---- links -----------------------------------------------------------------------------------


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def test_links_between_documents_resolve() -> None:
    anchors = {
        p.name: {_slug(h) for h in re.findall(r"^#+ (.+)$", p.read_text(encoding="utf-8"), re.M)}
        for p in MARKDOWN
    }
    for path in MARKDOWN:
        for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target):
                continue
            name, _, anchor = target.partition("#")
            name = name or path.name
            assert (DOCS / name).exists(), f"{path.name} links to missing {name}"
            if anchor:
                assert anchor in anchors.get(name, set()), f"{path.name}: no #{anchor} in {name}"


def test_the_index_links_every_document() -> None:
    index = _text("README.md")
    for path in DOCS.iterdir():
        if path.name != "README.md" and not path.name.startswith("."):
            assert f"]({path.name})" in index, f"docs/README.md does not link {path.name}"


# ---- the systemd unit ------------------------------------------------------------------------


def _unit_entries() -> list[tuple[str, str]]:
    """(key, value) of the unit, with `[Section]` headers as ("[Section]", "")."""
    entries: list[tuple[str, str]] = []
    for raw in UNIT.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            assert line.endswith("]"), raw
            entries.append((line, ""))
            continue
        key, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Za-z]+", key.strip()), f"not a unit line: {raw!r}"
        entries.append((key.strip(), value.strip()))
    return entries


def _unit() -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for key, value in _unit_entries():
        if key.startswith("["):
            current = sections.setdefault(key.strip("[]"), {})
        else:
            assert current is not None, "a setting before the first [Section]"
            current.setdefault(key, []).append(value)
    return sections


def _exec_argv(value: str) -> list[str]:
    return shlex.split(value.lstrip("+-@:!"))


def test_unit_structure() -> None:
    unit = _unit()
    assert set(unit) == {"Unit", "Service", "Install"}
    service = unit["Service"]
    assert service["Restart"] == ["on-failure"]
    caps = " ".join(service["CapabilityBoundingSet"]).split()
    assert caps == ["CAP_NET_ADMIN"], "the daemon needs CAP_NET_ADMIN and nothing else"
    (start,) = service["ExecStart"]
    (pre,) = service["ExecStartPre"]
    (post,) = service["ExecStopPost"]
    assert _exec_argv(start)[1] == "run"
    assert _exec_argv(pre)[1:3] == ["rules", "apply"] and pre.startswith("+")
    assert _exec_argv(post)[1:3] == ["rules", "remove"] and post.startswith("+")
    for value in (start, pre, post):
        assert _exec_argv(value)[0] == INSTALLED, "deployment.md installs into /opt/ftp-alg"
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_unit_agrees_with_the_config_file() -> None:
    unit = _unit()["Service"]
    settings = load(str(TOML), {})
    apply = build_parser().parse_args(_exec_argv(unit["ExecStartPre"][0])[1:])
    assert set(parse_ports(apply.ports)) == set(settings.core.control_ports)
    assert apply.queue_num == settings.queue_num
    run = build_parser().parse_args(_exec_argv(unit["ExecStart"][0])[1:])
    assert run.config == "/etc/ftp-alg/ftp-alg.toml"
    runtime = unit["RuntimeDirectory"][0]
    assert Path(settings.status_socket).parent == Path("/run") / runtime


def test_unit_verifies() -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (the structural checks still ran)")
    here = Path(sys.executable).parent / "ftp-alg"
    assert here.exists(), "the ftp-alg command is not installed next to this Python"
    problems = _verify(analyze, UNIT.read_text(encoding="utf-8").replace(INSTALLED, str(here)))
    assert problems == "", problems


def _verify(analyze: str, text: str) -> str:
    with tempfile.TemporaryDirectory() as tmpdir:
        path = Path(tmpdir) / "ftp-alg.service"
        path.write_text(text, encoding="utf-8")
        done = subprocess.run(
            [analyze, "verify", str(path)], capture_output=True, text=True, timeout=120
        )
        output = done.stdout + done.stderr
        complaints = [line for line in output.splitlines() if "ftp-alg.service" in line]
        if done.returncode != 0 or complaints:
            return f"exit {done.returncode}: {output}"
        return ""


def test_unit_verification_would_catch_a_mistake() -> None:
    """The check above can fail: a misspelt setting is reported."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    here = Path(sys.executable).parent / "ftp-alg"
    text = UNIT.read_text(encoding="utf-8").replace(INSTALLED, str(here))
    assert _verify(analyze, text.replace("Restart=on-failure", "Restart=sometimes")) != ""
