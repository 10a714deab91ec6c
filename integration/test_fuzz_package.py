"""The fuzz package (Fuzz/, built apart so the main build is untouched) compiles the main package's
own module sources through symlinks, so its module dependencies must follow the main package's:
a module that gains an import in Sources/ breaks `make fuzz`, which `make test` does not build.
This checks the two manifests agree, without building anything."""

import re
from pathlib import Path

from cnitest import REPO

TARGET = re.compile(r'\.target\(\s*name:\s*"(\w+)"(?:\s*,\s*dependencies:\s*\[([^\]]*)\])?', re.S)


def module_dependencies(manifest: Path) -> dict:
    found = {}
    for name, dependencies in TARGET.findall(manifest.read_text()):
        found[name] = set(re.findall(r'"(\w+)"', dependencies or ""))
    return found


def test_fuzz_modules_have_the_main_packages_dependencies():
    main = module_dependencies(REPO / "Package.swift")
    fuzz = module_dependencies(REPO / "Fuzz" / "Package.swift")
    shared = [path.name for path in (REPO / "Fuzz" / "Sources").iterdir() if path.is_symlink()]
    assert shared, "Fuzz/Sources holds no symlinked modules"
    for module in shared:
        if module not in main:  # a system library (CSystem, CNetlink): no dependencies to follow
            continue
        assert module in fuzz, f"Fuzz/Package.swift lacks the module {module}"
        assert fuzz[module] == main[module], (
            f"{module}: Fuzz/Package.swift depends on {sorted(fuzz[module])}, "
            f"Package.swift on {sorted(main[module])}")
