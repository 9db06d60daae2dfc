"""Plugins: modules that register solvers (with `@solvers.solver`) before a command reads the registry.

`--plugins NAME[,NAME...]` on `run`, `check` and `baseline` names each plugin as
  - a module path (`my_pkg.my_solvers`), imported;
  - a Python file (`path/to/my_solvers.py`), executed once as a module;
  - a plugin shipped here: `diffusers` (diffusers' schedulers as `diffusers.<name>` contenders).
Installed packages declare theirs in the entry-point group `samplerbench.plugins`
(`my_solvers = "my_pkg.my_solvers"`, or `"my_pkg:register"`, a function called with no arguments);
these load for every command that reads the registry. A plugin that fails to load is a one-line
`PluginError` naming it (exit 2 from the command line), never a traceback and never skipped.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import sys
from pathlib import Path

GROUP = "samplerbench.plugins"
SHIPPED = {"diffusers": "bench.contenders"}  # --plugins name -> module of a plugin shipped with samplerbench
COMMANDS = ("run", "check", "baseline")  # the commands that take --plugins and load the entry points

_loaded: dict[str, str] = {}  # plugin as given (file plugins: resolved path) -> module name


class PluginError(RuntimeError):
    """A plugin could not be found or raised while importing."""


def _error(what: str, e: BaseException) -> PluginError:
    detail = str(e).strip().splitlines()[-1] if str(e).strip() else ""
    return PluginError(f"{what} failed to load: {type(e).__name__}{': ' + detail if detail else ''}")


def _import_file(path: Path) -> str:
    name = f"samplerbench_plugin_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise PluginError(f"plugin file {str(path)!r} is not a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return name


def load(plugin: str) -> str:
    """Import one plugin (module path, .py file or shipped name) once; returns its module name."""
    if not isinstance(plugin, str) or not plugin.strip():
        raise PluginError(f"a plugin is a module path, a .py file or one of {', '.join(SHIPPED)}; got {plugin!r}")
    plugin = plugin.strip()
    is_file = plugin.endswith(".py") or "/" in plugin or "\\" in plugin
    key = str(Path(plugin).expanduser().resolve()) if is_file else plugin
    if key in _loaded:
        return _loaded[key]
    target = "" if is_file else SHIPPED.get(plugin, plugin)
    try:
        if is_file:
            path = Path(key)
            if not path.is_file():
                raise PluginError(f"plugin {plugin!r}: no such file")
            name = _import_file(path)
        else:
            name = target
            importlib.import_module(name)
    except PluginError:
        raise
    except ModuleNotFoundError as e:
        if e.name and (target == e.name or target.startswith(e.name + ".")):
            raise PluginError(f"plugin {plugin!r}: no module named {e.name!r} (give a module path, a .py file or "
                              f"one of {', '.join(SHIPPED)})") from None
        raise _error(f"plugin {plugin!r}", e) from None
    except (Exception, SystemExit) as e:  # noqa: BLE001  (any error in a plugin's own code: named, one line)
        raise _error(f"plugin {plugin!r}", e) from None
    _loaded[key] = name
    return name


def load_entry_points() -> list[str]:
    """Load every plugin installed under the entry-point group `samplerbench.plugins`; returns their names."""
    names = []
    for ep in importlib.metadata.entry_points(group=GROUP):
        key = f"entry point {ep.name} = {ep.value}"
        if key in _loaded:
            names.append(ep.name)
            continue
        dist = getattr(getattr(ep, "dist", None), "name", None)
        what = f"plugin entry point {ep.name!r}" + (f" of package {dist!r}" if dist else "") + f" ({ep.value})"
        try:
            obj = ep.load()
            if callable(obj):
                obj()
        except Exception as e:  # noqa: BLE001
            raise _error(what, e) from None
        _loaded[key] = ep.value
        names.append(ep.name)
    return names


def load_all(plugins) -> list[str]:
    """The installed entry points, then `plugins` (a list or a comma-separated string), in order."""
    if isinstance(plugins, str):
        plugins = [p for p in plugins.split(",") if p.strip()]
    return [*load_entry_points(), *(load(p) for p in plugins or [])]


def from_argv(argv: list[str]) -> list[str]:
    """The plugins named by every `--plugins X` / `--plugins=X` in `argv` (before argparse reads --solvers)."""
    out = []
    for i, a in enumerate(argv):
        if a == "--plugins" and i + 1 < len(argv):
            out += argv[i + 1].split(",")
        elif a.startswith("--plugins="):
            out += a.split("=", 1)[1].split(",")
    return [p.strip() for p in out if p.strip()]


def add_argument(parser) -> None:
    """`--plugins`, read by `bench.__main__` before parsing (so that --solvers knows the plugins' names)."""
    parser.add_argument("--plugins", default="", metavar="MODULE_OR_FILE[,...]",
                        help="import these modules or .py files first; they register solvers with "
                             f"@solvers.solver ({', '.join(SHIPPED)}: shipped contenders). Entry points in the group "
                             f"{GROUP} load automatically")


def loaded() -> list[str]:
    """Every plugin loaded so far, as given (files: resolved paths); for a run's manifest."""
    return list(_loaded)
