"""The extension's shipped files: CMake lists every file, the catalog entry follows Slicer's schema, the icon
is a 128x128 PNG, the panel's .ui loads (PySide6, offscreen) and holds every widget the module code names."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULE_FILE = ROOT / "MedSAMAgent.py"
UI_FILE = ROOT / "Resources" / "UI" / "MedSAMAgent.ui"


def _cmake_list(name: str) -> list[str]:
    text = (ROOT / "CMakeLists.txt").read_text()
    match = re.search(rf"set\({name}\s+(.*?)\)", text, re.S)
    assert match, f"CMakeLists.txt has no set({name} ...)"
    return [line.strip() for line in match.group(1).splitlines() if line.strip() and not line.strip().startswith("#")]


def _shipped_files() -> set[str]:
    """Files under MedSAMAgentLib/ and Resources/ that the repository holds (git's view, .gitignore applied)."""
    try:
        out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "--", "MedSAMAgentLib", "Resources"],
                             cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        out = [str(p.relative_to(ROOT)) for folder in ("MedSAMAgentLib", "Resources")
               for p in (ROOT / folder).rglob("*") if p.is_file()]
    return {f for f in out if "__pycache__" not in f and not f.endswith(".pyc") and (ROOT / f).exists()}


def test_cmake_lists_every_shipped_file():
    scripts = [s.replace("${MODULE_NAME}", "MedSAMAgent") for s in _cmake_list("MODULE_PYTHON_SCRIPTS")]
    resources = _cmake_list("MODULE_PYTHON_RESOURCES")
    listed = set(scripts) | set(resources)
    tree = _shipped_files()
    missing_scripts = sorted(f for f in tree - listed if f.endswith(".py"))
    missing_resources = sorted(f for f in tree - listed if not f.endswith(".py"))
    stale = sorted(f for f in listed if not (ROOT / f).exists())
    problems = []
    if missing_scripts:
        problems.append("add to MODULE_PYTHON_SCRIPTS in CMakeLists.txt:\n  " + "\n  ".join(missing_scripts))
    if missing_resources:
        problems.append("add to MODULE_PYTHON_RESOURCES in CMakeLists.txt:\n  " + "\n  ".join(missing_resources))
    if stale:
        problems.append("listed in CMakeLists.txt but not in the tree (remove):\n  " + "\n  ".join(stale))
    assert not problems, "\n".join(problems)
    assert "MedSAMAgent.py" in scripts
    assert all(not f.endswith(".py") for f in resources)


def test_cmake_extension_metadata():
    text = (ROOT / "CMakeLists.txt").read_text()
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"):
        assert re.search(rf'set\({key} "[^"]+"\)', text), f"{key} is not set in CMakeLists.txt"
    assert 'set(EXTENSION_CATEGORY "Segmentation")' in text
    contributors = re.search(r'set\(EXTENSION_CONTRIBUTORS "([^"]+)"\)', text).group(1)
    assert all(re.fullmatch(r"[^(),]+ \([^()]+\)", c.strip()) for c in contributors.split(",")), \
        f"contributors must be 'Name (Affiliation)', comma-separated: {contributors}"
    assert 'set(EXTENSION_DEPENDS "PyTorch")' in text  # torch through the PyTorch extension's installTorch
    assert json.loads((ROOT / "MedSAMAgent.json").read_text())["build_dependencies"] == ["PyTorch"]
    assert (ROOT / "LICENSE").is_file() and "Apache License" in (ROOT / "LICENSE").read_text()[:200]
    assert "slicerMacroBuildScriptedModule(" in text and "WITH_GENERIC_TESTS" in text
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text


def test_catalog_entry_follows_the_index_schema():
    """Slicer/Slicer Schemas/slicer-extension-catalog-entry-schema-v1.0.2.json: required $schema, category,
    scm_url; no other properties than the schema's; types as it says."""
    entry = json.loads((ROOT / "MedSAMAgent.json").read_text())
    allowed = {"$schema": str, "category": str, "scm_url": str, "scm_revision": str, "scm_type": str,
               "build_dependencies": list, "dicom_support_rule": str, "build_subdirectory": str,
               "enabled": bool, "tier": int}
    assert {"$schema", "category", "scm_url"} <= set(entry)
    assert set(entry) <= set(allowed), f"not in the schema: {set(entry) - set(allowed)}"
    for key, value in entry.items():
        assert isinstance(value, allowed[key]), f"{key} should be {allowed[key].__name__}"
    assert entry["$schema"].startswith("https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/"
                                       "slicer-extension-catalog-entry-schema-v1.0.")
    assert entry["category"] == "Segmentation"
    assert entry.get("scm_type", "git") in ("git", "local")
    assert 1 <= entry.get("tier", 1) <= 5
    assert all(isinstance(d, str) for d in entry.get("build_dependencies", []))


def test_icon_is_128_png():
    from PIL import Image

    with Image.open(ROOT / "Resources" / "Icons" / "MedSAMAgent.png") as icon:
        assert icon.format == "PNG"
        assert icon.size == (128, 128)


def _ui_names_in_module() -> set[str]:
    """Every ``self.ui.<name>`` / ``widget.ui.<name>`` the module file and the panel use."""
    names = set()
    for path in (MODULE_FILE, ROOT / "MedSAMAgentLib" / "slicer" / "widget.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr == "ui":
                names.add(node.attr)
    return names


def test_ui_file_loads_and_has_every_widget_the_module_names():
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    QtWidgets = pytest.importorskip("PySide6.QtWidgets")
    from PySide6.QtCore import QFile
    from PySide6.QtUiTools import QUiLoader

    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    loader = QUiLoader()
    handle = QFile(str(UI_FILE))
    assert handle.open(QFile.ReadOnly)
    widget = loader.load(handle)
    handle.close()
    assert widget is not None, f"QUiLoader could not load {UI_FILE}: {loader.errorString()}"
    present = {w.objectName() for w in widget.findChildren(QtWidgets.QWidget)}
    used = _ui_names_in_module()
    assert used, "found no self.ui.<widget> in MedSAMAgent.py"
    missing = sorted(used - present)
    assert not missing, f"MedSAMAgent.py uses widgets that {UI_FILE.name} lacks: {missing}"
    # the Slicer widgets the panel is built from are declared as such
    text = UI_FILE.read_text()
    for cls, name in (("qMRMLNodeComboBox", "inputVolumeSelector"), ("qMRMLSegmentSelectorWidget", "segmentSelector"),
                      ("ctkCollapsibleButton", "sessionCollapsibleButton"), ("ctkDirectoryButton", "logFolderButton")):
        assert f'class="{cls}" name="{name}"' in text
    # it fits Slicer's module panel (about 400 px by default): no row or label forces the panel wider
    assert widget.minimumSizeHint().width() <= 420, widget.minimumSizeHint()
    widget.deleteLater()
    del app


def test_module_file_keeps_qt_out_of_the_library():
    """The bridge modules import only slicer, vtk, numpy and the package's own pure modules."""
    allowed = {"slicer", "vtk", "numpy", "__future__", "dataclasses", "typing", "pathlib", "re", "time",
               "importlib", "math", "threading", "queue", "packaging", "PyTorchUtils"}  # the PyTorch extension
    bridge = sorted((ROOT / "MedSAMAgentLib" / "slicer").glob("*.py"))
    assert len(bridge) >= 8
    for path in (p for p in bridge if p.name != "widget.py"):  # the panel itself is the one Qt module
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                roots = set() if node.level else {(node.module or "").split(".")[0]}
            else:
                continue
            bad = roots - allowed
            assert not bad, f"{path.name} imports {bad}: the Slicer bridge may use only {sorted(allowed)}"
