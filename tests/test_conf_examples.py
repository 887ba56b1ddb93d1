"""The shipped agent configurations parse, and agree with each other on ports and acks."""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest
import yaml

from atnorm.cli.serve import configure_parser
from atnorm.config.options import host_port
from atnorm.relay.service import load_settings

CONF = Path(__file__).resolve().parents[1] / "conf"


def atnorm_settings(path: Path = CONF / "atnorm.yaml") -> Any:
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    settings, _ = load_settings(parser.parse_args(["--config", str(path)]))
    return settings


def listen_port() -> int:
    return host_port(atnorm_settings().listen[0])[1]


def forward_port() -> int:
    return host_port(atnorm_settings().forward[0])[1]


# --- Fluent Bit classic: [SECTION] headers and `Key Value` lines -----------------------------

Section = Tuple[str, Dict[str, str]]


def parse_classic(path: Path) -> List[Section]:
    """A small checker for Fluent Bit's classic format; fails on any line it cannot place."""
    sections: List[Section] = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        header = re.fullmatch(r"\[([A-Z_]+)\]", line)
        if header:
            assert raw == line, f"{path.name}:{number}: section headers start in column 1"
            sections.append((header.group(1), {}))
            continue
        pair = re.fullmatch(r"([A-Za-z_.]+)\s+(\S.*)", line)
        assert pair and raw.startswith((" ", "\t")), f"{path.name}:{number}: expected an indented 'Key Value'"
        assert sections, f"{path.name}:{number}: key outside a section"
        key = pair.group(1).lower()
        assert key not in sections[-1][1], f"{path.name}:{number}: {pair.group(1)} given twice"
        sections[-1][1][key] = pair.group(2)
    return sections


def only(sections: List[Section], kind: str, **match: str) -> Dict[str, str]:
    found = [body for name, body in sections
             if name == kind and all(body.get(k, "").lower() == v.lower() for k, v in match.items())]
    assert len(found) == 1, f"expected one [{kind}] with {match}, found {len(found)}"
    return found[0]


def test_atnorm_yaml_parses_with_atnorms_own_loader():
    settings = atnorm_settings()
    assert settings.listen and settings.forward
    assert settings.rejected_tag == "{tag}.rejected"
    assert settings.spool_path.startswith(settings.data_dir)


def test_classic_shipper_forwards_to_atnorm_with_acks():
    sections = parse_classic(CONF / "fluent-bit" / "forward-to-atnorm.conf")
    assert [name for name, _ in sections] == ["SERVICE", "INPUT", "OUTPUT"]
    output = only(sections, "OUTPUT", name="forward")
    assert output["require_ack_response"].lower() == "on"
    assert int(output["port"]) == listen_port()


def test_classic_aggregator_listens_where_atnorm_forwards():
    sections = parse_classic(CONF / "fluent-bit" / "aggregator.conf")
    source = only(sections, "INPUT", name="forward")
    assert int(source["port"]) == forward_port()
    assert only(sections, "OUTPUT", match="*.rejected")


def fluent_bit_yaml(name: str) -> Dict[str, Any]:
    document = yaml.safe_load((CONF / "fluent-bit" / name).read_text(encoding="utf-8"))
    assert set(document) == {"service", "pipeline"}
    assert set(document["pipeline"]) == {"inputs", "outputs"}
    return document


def plugins(document: Dict[str, Any], kind: str, name: str) -> List[Dict[str, Any]]:
    return [{k.lower(): v for k, v in plugin.items()} for plugin in document["pipeline"][kind]
            if plugin["name"] == name]


def test_yaml_shipper_forwards_to_atnorm_with_acks():
    document = fluent_bit_yaml("forward-to-atnorm.yaml")
    [output] = plugins(document, "outputs", "forward")
    assert output["require_ack_response"] in (True, "on", "true")
    assert int(output["port"]) == listen_port()


def test_yaml_aggregator_listens_where_atnorm_forwards():
    document = fluent_bit_yaml("aggregator.yaml")
    [source] = plugins(document, "inputs", "forward")
    assert int(source["port"]) == forward_port()


@pytest.mark.parametrize("classic, structured", [("forward-to-atnorm.conf", "forward-to-atnorm.yaml"),
                                                 ("aggregator.conf", "aggregator.yaml")])
def test_the_classic_and_yaml_files_say_the_same(classic, structured):
    sections = parse_classic(CONF / "fluent-bit" / classic)
    document = fluent_bit_yaml(structured)
    for kind, plural in (("INPUT", "inputs"), ("OUTPUT", "outputs")):
        classic_plugins = [(body["name"], body.get("port")) for name, body in sections if name == kind]
        yaml_plugins = [(p["name"], str(p["port"]) if "port" in p else None) for p in document["pipeline"][plural]]
        assert classic_plugins == yaml_plugins


# --- Fluentd ---------------------------------------------------------------------------------

def fluentd_sections(path: Path) -> List[Tuple[str, str, List[str]]]:
    """(section, argument, directive lines) for every <section>, checking tags are balanced."""
    stack: List[Tuple[str, str, List[str]]] = []
    done: List[Tuple[str, str, List[str]]] = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.split("#", 1)[0].strip() if not raw.strip().startswith("#") else ""
        if not line:
            continue
        opening = re.fullmatch(r"<([a-z_]+)(?:\s+([^>]+))?>", line)
        closing = re.fullmatch(r"</([a-z_]+)>", line)
        if opening:
            stack.append((opening.group(1), opening.group(2) or "", []))
        elif closing:
            assert stack and stack[-1][0] == closing.group(1), f"{path.name}:{number}: unbalanced </{closing.group(1)}>"
            done.append(stack.pop())
        else:
            assert stack, f"{path.name}:{number}: directive outside any section"
            assert re.fullmatch(r"@?[a-z_]+(\s+\S.*)?", line), f"{path.name}:{number}: not a directive"
            stack[-1][2].append(line)
    assert not stack, f"{path.name}: <{stack[-1][0]}> is never closed"
    return done


def test_fluentd_chain_is_balanced_and_asks_for_acks():
    sections = fluentd_sections(CONF / "fluentd" / "forward.conf")
    [shipper] = [s for s in sections if s[0] == "match" and "@type forward" in s[2]]
    assert "require_ack_response true" in shipper[2]
    [server] = [s for s in sections if s[0] == "server"]
    assert f"port {listen_port()}" in server[2]
    [source] = [s for s in sections if s[0] == "source" and "@type forward" in s[2]]
    assert f"port {forward_port()}" in source[2]
    matches = [argument for kind, argument, _ in sections if kind == "match"]
    # Shipper, then the aggregator: dead letters matched before the pattern that would also catch them.
    assert matches == ["audit.**", "**.rejected", "audit.**"]


# --- what the agents themselves would check ------------------------------------------------
#
# Neither agent is a Python package, so these tests check by reading the files what the
# agents' own `--dry-run` looks at, and run the real dry-run too where the binary is on PATH.

FLUENT_BIT = CONF / "fluent-bit"
FLUENT_BIT_CLASSIC = sorted(p.name for p in FLUENT_BIT.glob("*.conf")
                            if not p.name.endswith(("parsers.conf", "upstream.conf")))
FLUENT_BIT_YAML = sorted(p.name for p in FLUENT_BIT.glob("*.yaml"))
FLUENTD_OWN = ["forward.conf", "forward-to-relays.conf"]  # exec-filter.conf has its own tests (test_execfilter)
SHORT_FLUSH_SECONDS = 5


def fluent_bit_service(name: str) -> Dict[str, Any]:
    if name.endswith(".yaml"):
        return {k.lower(): v for k, v in fluent_bit_yaml(name)["service"].items()}
    [service] = [body for kind, body in parse_classic(FLUENT_BIT / name) if kind == "SERVICE"]
    return service


def fluent_bit_plugins(name: str) -> List[Dict[str, Any]]:
    """Every input, filter and output of a Fluent Bit file, keys lower-cased."""
    if name.endswith(".yaml"):
        pipeline = fluent_bit_yaml(name)["pipeline"]
        return [{k.lower(): v for k, v in plugin.items()}
                for kind in ("inputs", "filters", "outputs") for plugin in pipeline.get(kind, [])]
    return [body for kind, body in parse_classic(FLUENT_BIT / name) if kind in ("INPUT", "FILTER", "OUTPUT")]


def parsers_files(name: str) -> List[Path]:
    """The parsers files a Fluent Bit file loads; relative names are resolved next to it,
    as Fluent Bit does."""
    value = fluent_bit_service(name).get("parsers_file")
    values = value if isinstance(value, list) else [value] if value else []
    return [FLUENT_BIT / v for v in values]


def defined_parsers(path: Path) -> List[str]:
    sections = parse_classic(path)
    assert sections and all(kind in ("PARSER", "MULTILINE_PARSER") for kind, _ in sections), path.name
    for _, body in sections:
        assert body.get("name") and body.get("format"), f"{path.name}: a parser needs Name and Format"
    return [body["name"] for _, body in sections]


@pytest.mark.parametrize("name", FLUENT_BIT_CLASSIC + FLUENT_BIT_YAML)
def test_fluent_bit_files_load_only_parsers_files_that_are_shipped(name):
    for path in parsers_files(name):
        assert path.is_file(), f"{name} loads {path.name}, which is not in conf/fluent-bit/"


@pytest.mark.parametrize("name", FLUENT_BIT_CLASSIC + FLUENT_BIT_YAML)
def test_every_parser_a_fluent_bit_file_uses_is_defined(name):
    """Without its parser, tail sends each line as {"log": "<line>"}: atnorm would see no event."""
    defined = set()  # Fluent Bit's own `json` is in its parsers.conf, which these files do not load
    for path in parsers_files(name):
        defined.update(defined_parsers(path))
    for plugin in fluent_bit_plugins(name):
        for key in ("parser", "parser_firstline", "multiline.parser"):
            if plugin.get(key):
                for parser in str(plugin[key]).split(","):
                    assert parser.strip() in defined, f"{name}: parser {parser.strip()!r} is not defined"


def test_the_shipper_parses_each_line_into_the_event():
    for name in ("forward-to-atnorm.conf", "forward-to-atnorm.yaml"):
        [tail] = [p for p in fluent_bit_plugins(name) if p["name"] == "tail"]
        [parsers] = parsers_files(name)
        [body] = [body for _, body in parse_classic(parsers) if body["name"] == tail["parser"]]
        assert body["format"] == "json"


@pytest.mark.parametrize("name", FLUENT_BIT_CLASSIC + FLUENT_BIT_YAML)
def test_fluent_bit_flushes_within_seconds(name):
    """Fluent Bit's file output writes at each flush: the dead letters are on disk within `flush`."""
    assert 0 < float(fluent_bit_service(name)["flush"]) <= SHORT_FLUSH_SECONDS


IP_LITERAL = re.compile(r"\d{1,3}(\.\d{1,3}){3}|\[?[0-9a-fA-F:]*:[0-9a-fA-F:]*\]?")


@pytest.mark.parametrize("name", FLUENT_BIT_CLASSIC + FLUENT_BIT_YAML)
def test_fluent_bit_files_name_no_host_that_needs_resolving(name):
    for plugin in fluent_bit_plugins(name):
        for key in ("host", "listen"):
            if key in plugin:
                assert IP_LITERAL.fullmatch(str(plugin[key])), f"{name}: {key} {plugin[key]} is not an address"


def fluentd_directives(lines: List[str]) -> Dict[str, str]:
    return dict((line.split(None, 1) + [""])[:2] for line in lines)


# Parameters Fluentd v1 still reads but warns about (v0.12 names), or no longer knows.
FLUENTD_DEPRECATED = {"type", "buffer_type", "buffer_path", "buffer_chunk_limit", "buffer_queue_limit",
                      "num_threads", "time_slice_format", "time_slice_wait", "utc", "localtime",
                      "format", "time_format", "include_time_key", "flush_at_shutdown",
                      "disable_retry_limit", "max_retry_wait", "retry_limit"}


@pytest.mark.parametrize("name", FLUENTD_OWN)
def test_fluentd_files_use_v1_parameters_only(name):
    for kind, argument, lines in fluentd_sections(CONF / "fluentd" / name):
        for key in fluentd_directives(lines):
            assert key not in FLUENTD_DEPRECATED, f"{name}: <{kind} {argument}> uses {key} (deprecated)"
        if kind in ("source", "match", "filter"):
            assert "@type" in fluentd_directives(lines), f"{name}: <{kind} {argument}> without @type"


@pytest.mark.parametrize("name", FLUENTD_OWN)
def test_fluentd_files_name_no_host_that_needs_resolving(name):
    for kind, _, lines in fluentd_sections(CONF / "fluentd" / name):
        directives = fluentd_directives(lines)
        for key in ("host", "bind"):
            if key in directives:
                assert IP_LITERAL.fullmatch(directives[key]), f"{name}: <{kind}> {key} {directives[key]}"


def test_fluentd_dead_letters_reach_their_file_within_seconds():
    """out_file's default buffer (chunk key time, timekey 1d, flush_mode lazy) would write a
    day's dead letters only after the day ends."""
    text = (CONF / "fluentd" / "forward.conf").read_text(encoding="utf-8")
    sections = fluentd_sections(CONF / "fluentd" / "forward.conf")
    buffers = [s for s in sections if s[0] == "buffer"]
    outputs = [s for s in sections if s[0] == "match" and "@type file" in s[2]]
    assert outputs, "the aggregator writes dead letters to a file"
    assert text.count("<buffer") == len(buffers) and len(buffers) >= len(outputs) + 1
    for _, _, lines in buffers:
        directives = fluentd_directives(lines)
        assert directives.get("flush_mode") == "interval", lines
        interval = directives["flush_interval"]
        assert interval.endswith("s") and float(interval[:-1]) <= SHORT_FLUSH_SECONDS


def test_fluentd_records_back_from_atnorm_cannot_loop_to_it():
    """in_forward's records enter a <label>: the shipper's `audit.**` cannot send them round."""
    sections = fluentd_sections(CONF / "fluentd" / "forward.conf")
    [source] = [s for s in sections if s[0] == "source" and "@type forward" in s[2]]
    label = fluentd_directives(source[2]).get("@label")
    assert label and label.startswith("@"), "in_forward needs @label"
    assert [s for s in sections if s[0] == "label" and s[1] == label], f"no <label {label}>"


# The real agents, when installed (CI does not install them: these then skip).

@pytest.mark.parametrize("name", FLUENT_BIT_CLASSIC + FLUENT_BIT_YAML)
def test_fluent_bit_dry_run(name):
    binary = shutil.which("fluent-bit")
    if binary is None:
        pytest.skip("fluent-bit is not installed")
    result = subprocess.run([binary, "--dry-run", "-c", str(FLUENT_BIT / name)], capture_output=True,
                            text=True, timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "[error]" not in output, output


@pytest.mark.parametrize("name", FLUENTD_OWN)
def test_fluentd_dry_run(name):
    binary = shutil.which("fluentd")
    if binary is None:
        pytest.skip("fluentd is not installed")
    result = subprocess.run([binary, "--dry-run", "-c", str(CONF / "fluentd" / name)], capture_output=True,
                            text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "[error]" not in output and "deprecated" not in output, output


# --- several relays behind one shipper, and in Kubernetes ------------------------------------

def test_fluent_bit_balances_over_three_relays_with_acks():
    sections = parse_classic(FLUENT_BIT / "forward-to-relays.conf")
    output = only(sections, "OUTPUT", name="forward")
    assert output["require_ack_response"].lower() == "on" and output["retry_limit"] == "no_limits"
    assert "host" not in output and "port" not in output, "the nodes come from the Upstream file"
    # Fluent Bit resolves a relative Upstream path next to the main file, as Parsers_File.
    upstream = parse_classic(FLUENT_BIT / output["upstream"])
    assert [kind for kind, _ in upstream] == ["UPSTREAM", "NODE", "NODE", "NODE"]
    nodes = [body for kind, body in upstream if kind == "NODE"]
    assert all(body["name"] and IP_LITERAL.fullmatch(body["host"]) for body in nodes)
    assert len({(body["host"], body["port"]) for body in nodes}) == 3
    assert int(nodes[0]["port"]) == listen_port()


def test_fluentd_balances_over_the_same_three_relays_with_acks():
    sections = fluentd_sections(CONF / "fluentd" / "forward-to-relays.conf")
    [shipper] = [s for s in sections if s[0] == "match" and "@type forward" in s[2]]
    assert "require_ack_response true" in shipper[2]
    fluentd_nodes = [(fluentd_directives(lines)["host"], fluentd_directives(lines)["port"])
                     for kind, _, lines in sections if kind == "server"]
    upstream = parse_classic(FLUENT_BIT / "atnorm-upstream.conf")
    fluent_bit_nodes = [(body["host"], body["port"]) for kind, body in upstream if kind == "NODE"]
    assert fluentd_nodes == fluent_bit_nodes


def kubernetes_objects() -> Dict[str, Dict[str, Any]]:
    documents = list(yaml.safe_load_all((CONF / "kubernetes" / "atnorm-relay.yaml").read_text(encoding="utf-8")))
    return {document["kind"]: document for document in documents}


def test_kubernetes_config_map_is_a_valid_atnorm_config(tmp_path):
    config = tmp_path / "atnorm.yaml"
    config.write_text(kubernetes_objects()["ConfigMap"]["data"]["atnorm.yaml"], encoding="utf-8")
    settings = atnorm_settings(config)
    assert host_port(settings.listen[0]) == ("0.0.0.0", 24224)
    assert settings.forward and settings.metrics_listen


def test_kubernetes_deployment_serves_the_config_map_and_drains_before_it_is_killed(tmp_path):
    objects = kubernetes_objects()
    config = tmp_path / "atnorm.yaml"
    config.write_text(objects["ConfigMap"]["data"]["atnorm.yaml"], encoding="utf-8")
    settings = atnorm_settings(config)
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports["forward"] == host_port(settings.listen[0])[1]
    assert ports["metrics"] == host_port(settings.metrics_listen)[1]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert pod["terminationGracePeriodSeconds"] > settings.shutdown_timeout
    mounts = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}
    assert mounts["spool"] == settings.data_dir
    assert container["args"][:3] == ["serve", "--config", f"{mounts['config']}/atnorm.yaml"]
    service = objects["Service"]["spec"]
    assert service["selector"] == objects["Deployment"]["spec"]["selector"]["matchLabels"]
    assert {port["targetPort"] for port in service["ports"]} <= set(ports)
