"""The shipped agent configurations parse, and agree with each other on ports and acks."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest
import yaml

from atnorm.options import host_port
from atnorm.relay import configure_parser, load_settings

CONF = Path(__file__).resolve().parents[1] / "conf"


def atnorm_settings() -> Dict[str, Any]:
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    settings, _ = load_settings(parser.parse_args(["--config", str(CONF / "atnorm.yaml")]))
    return settings


def listen_port() -> int:
    return host_port(atnorm_settings()["listen"][0])[1]


def forward_port() -> int:
    return host_port(atnorm_settings()["forward"][0])[1]


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
    assert settings["listen"] and settings["forward"]
    assert settings["rejected_tag"] == "{tag}.rejected"
    assert settings["spool_path"].startswith(settings["data_dir"])


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
