"""`clave systemd render`: the systemd units of `systemd/` rendered without Ansible, with the role's own
variables (ansible/roles/clave/defaults/main.yml, then vars/main.yml, then `--set`): one source of truth.

    clave systemd render --mode local --out ./units
    clave systemd render --mode nitro --node geth --set clave_kms_key_id=arn:… --set 'clave_pcrs={0: "…"}' --out ./units

Variables are resolved as Ansible resolves them: a value may name others (`{{ clave_install_dir }}/venv`),
and a value that is one expression keeps its type (a list stays a list). The templates are rendered as the
`template` module renders them (trim_blocks; the file's trailing newline kept, an include's dropped).
Needs Jinja2 and PyYAML (both come with ansible-core; `pip install 'clave[systemd]'` without it): imported
only when this command runs.
"""

from __future__ import annotations

import argparse
import json
import posixpath
import re
import shlex
from pathlib import Path
from typing import Any

NODES = ("geth", "opera", "sonic")
ROLE = Path("ansible") / "roles" / "clave"
TEMPLATES = Path("systemd")
_NAME = re.compile(r"^clave_[a-z0-9_]+$")


def add_systemd_commands(subparsers: Any) -> None:
    """Add `clave systemd render` to the `clave` parser's subcommands."""
    systemd = subparsers.add_parser("systemd", help="systemd units without Ansible")
    sub = systemd.add_subparsers(dest="systemd_command", required=True)
    render = sub.add_parser("render", help="render the units of systemd/ with the Ansible role's defaults")
    render.add_argument("--mode", required=True, choices=("local", "nitro"),
                        help="nitro: the enclave in AWS Nitro Enclaves; local: the software enclave and KMS emulator")
    render.add_argument("--node", choices=NODES, default=None,
                        help="also render the drop-in that points this node's unit at clave (<node>.service.d/50-clave.conf)")
    render.add_argument("--set", dest="settings", action="append", default=[], metavar="clave_VAR=VALUE",
                        help="override a role variable; VALUE is read as YAML (lists, maps; quote hex: "
                        "clave_pcrs='{0: \"ab…\"}'), repeatable")
    render.add_argument("--out", required=True, metavar="DIR",
                        help="directory to write the units into (created; existing files are replaced)")
    render.add_argument("--source", default=None, metavar="DIR",
                        help="the clave source tree holding systemd/ and ansible/ (default: the one this clave "
                        "runs from)")
    render.set_defaults(func=cmd_systemd_render)


def cmd_systemd_render(args: argparse.Namespace) -> int:
    source = _source(args.source)
    jinja2, yaml = _libraries()
    overrides: dict[str, Any] = {"clave_mode": args.mode}
    if args.node:
        overrides["clave_node_kind"] = args.node
    for item in args.settings:
        name, sep, text = item.partition("=")
        if not sep or not _NAME.match(name):
            raise SystemExit(f"clave: --set {item}: expected clave_VARIABLE=VALUE (a variable of the clave role)")
        try:
            overrides[name] = yaml.safe_load(text) if text else ""
        except yaml.YAMLError as exc:
            raise SystemExit(f"clave: --set {name}: not a YAML value ({one_line(str(exc))}); quote it") from None
    if args.mode == "nitro" and not overrides.get("clave_kms_key_id"):
        raise SystemExit("clave: --mode nitro needs the KMS key: --set clave_kms_key_id=arn:aws:kms:REGION:ACCOUNT:key/ID "
                         "(and --set clave_kms_region=REGION)")
    units = render(source, overrides)
    out = Path(args.out)
    for relative, text in units.items():
        path = out / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(path)
    return 0


def one_line(text: str) -> str:
    return " ".join(text.split())


def _source(given: str | None) -> Path:
    candidates = [Path(given)] if given else [Path(__file__).resolve().parents[3], Path.cwd()]
    for candidate in candidates:
        if (candidate / TEMPLATES / "clave.service.j2").is_file() and (candidate / ROLE / "defaults/main.yml").is_file():
            return candidate
    where = given or "the directory this clave runs from, or the current one"
    raise SystemExit(f"clave: no systemd/ and ansible/roles/clave/ in {where}; pass --source DIR (a clave checkout "
                     "or source archive)")


def _libraries() -> tuple[Any, Any]:
    try:
        import jinja2
        import jinja2.nativetypes  # noqa: F401
        import yaml
    except ImportError as exc:
        raise SystemExit(f"clave: systemd render needs {exc.name}: pip install 'clave[systemd]' (Jinja2 and PyYAML; "
                         "ansible-core brings both)") from None
    return jinja2, yaml


def render(source: Path, overrides: dict[str, Any]) -> dict[str, str]:
    """{path relative to the output directory: unit text} for these variables."""
    jinja2, yaml = _libraries()
    role = source / ROLE
    raw: dict[str, Any] = {}
    for name in ("defaults/main.yml", "vars/main.yml"):
        raw.update(yaml.safe_load((role / name).read_text()) or {})
    raw.update(overrides)
    vars_ = Resolver(raw, jinja2).all()
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(source / TEMPLATES)), trim_blocks=True,
                             undefined=jinja2.StrictUndefined, autoescape=False)
    env.filters.update(ANSIBLE_FILTERS)

    def template(name: str) -> str:
        # As the template module: included files lose their last newline, the rendered file keeps its own.
        text = env.get_template(name).render(vars_)
        wanted = _trailing_newlines((source / TEMPLATES / name).read_text())
        return text + "\n" * max(0, wanted - _trailing_newlines(text))

    out: dict[str, str] = {}
    for unit in vars_["clave_units"]:
        out[unit] = template(vars_["clave_units_all"][unit])
    if vars_["clave_node_kind"] != "none":
        dropin = vars_["clave_node_dropin"].removeprefix(vars_["clave_systemd_dir"]).lstrip("/")
        out[dropin] = template("node-dropin.conf.j2")
    return out


def _trailing_newlines(text: str) -> int:
    return len(text) - len(text.rstrip("\n"))


class Resolver:
    """Ansible's lazy variables: a string holding `{{ … }}` is rendered when first needed, after the
    variables it names; one whole expression keeps its native type."""

    def __init__(self, raw: dict[str, Any], jinja2: Any) -> None:
        from jinja2 import meta
        from jinja2.nativetypes import NativeEnvironment

        self.raw = raw
        self.meta = meta
        self.env = NativeEnvironment(undefined=jinja2.StrictUndefined)
        self.env.filters.update(ANSIBLE_FILTERS)
        self.done: dict[str, Any] = {}
        self.busy: set[str] = set()

    def all(self) -> dict[str, Any]:
        for name in self.raw:
            self.get(name)
        return dict(self.done)

    def get(self, name: str) -> Any:
        if name in self.done:
            return self.done[name]
        if name in self.busy:
            raise SystemExit(f"clave: the role's variable {name} refers to itself")
        self.busy.add(name)
        value = self._resolve(self.raw[name])
        self.busy.discard(name)
        self.done[name] = value
        return value

    def _resolve(self, value: Any) -> Any:
        if isinstance(value, str) and ("{{" in value or "{%" in value):
            names = self.meta.find_undeclared_variables(self.env.parse(value))
            context = {n: self.get(n) for n in names if n in self.raw}
            return self.env.from_string(value).render(context)
        if isinstance(value, list):
            return [self._resolve(v) for v in value]
        if isinstance(value, dict):
            return {k: self._resolve(v) for k, v in value.items()}
        return value


def _bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("yes", "on", "1", "true", "y", "t")
    return bool(value)


def _regex_replace(value: Any, pattern: str = "", replacement: str = "", ignorecase: bool = False) -> str:
    flags = re.I if ignorecase else 0
    return re.sub(pattern, replacement, str(value), flags=flags)


# The Ansible filters the role's templates and variables use, beyond Jinja2's own.
ANSIBLE_FILTERS: dict[str, Any] = {
    "bool": _bool,
    "regex_replace": _regex_replace,
    "dirname": posixpath.dirname,
    "basename": posixpath.basename,
    "quote": lambda value: shlex.quote(str(value)),
    "to_json": json.dumps,
}
